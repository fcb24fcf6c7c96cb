"""The model-swap scenario's checks (pure functions over what the harness recorded): which model may have
served each attribute event, whether each input partition switched models without going back, and the
swap pause. `swap_scenario.py` collects the inputs; tests/test_swap_rules.py shows each rule failing.

**The model in force.** Two step functions of wall-clock time (one machine: the harness, the worker and
the broker share the clock):

- D(t), the *desired* model: the worker's configured model until the first `enrich rollout set`, then the
  model of the last set whose write had *begun* by t;
- R_w(t), the model worker incarnation w *says* it runs: its configured model (ENRICH_MODEL_DIR), then
  from each report's `since` (stamped right after the switch, before any batch of the new model starts)
  the reported digest.

An event of digest X, whose input was produced at p and appended to the output at o, passes iff X is one
of the two models and X = D(t) or X = R_w(t) for some t in [p, o] (w: the event's worker_id; each
incarnation has its own). R covers the lag of a swap (inputs produced after the set are served by the
old model until the worker has prepared the new one) and re-deliveries after the kill (a restarted worker
starts on its configured model); D covers a switch the killed incarnation made but never reported. It
fails a worker that stamps another model than it reports, serves a model before it was set, or serves the
old model for input produced after its own switch. A worker that ignores the control topic passes it (it
truthfully reports the old model): the scenario's "swap done" check (every set followed by a report of
its digest) fails that one.

**Never back.** Per (incarnation, input partition), in input-offset order, the event digests run through
the incarnation's model sequence (configured, then each reported switch, then a desired model it may have
switched to before its kill without reporting) without going back: a run of A after B needs a later
switch to A. This is the no-mixed-batch evidence events can give: a batch carries one model identity, and
`processed_at` (per emitted batch, millisecond resolution) cannot tell two batches of the same millisecond
apart; the worker's own `enrich_mixed_batches_total` is scraped as well.

**Old model done at the report.** The worker reports a swap only after the old model's last batch: no event
of the old model from that incarnation may be appended later than the report plus `LATE_SLACK_S` (the old
batch's events are queued before the report, appended after the producer's linger and a round trip).

**Every switch desired.** A reported switch to X at `since` needs D(since) = X.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["LATE_SLACK_S", "ModelCheck", "OutEvent", "Pauses", "Switch", "check_models", "stamp_seconds",
           "swap_pauses"]

LATE_SLACK_S = 0.5
_EXAMPLES = 5

Steps = list[tuple[float, str]]  # (from, value), sorted; the first from is -inf


@dataclass(frozen=True, slots=True)
class OutEvent:
    listing_id: str
    digest: str
    worker_id: str
    produced: float  # when the harness took the input for producing (s, wall clock)
    appended: float  # the broker's LogAppendTime of the attribute event
    partition: int  # of the input
    offset: int


@dataclass(frozen=True, slots=True)
class Switch:
    """A worker report that changed its model: `since` (the switch) and `reported` (its reported_at)."""

    worker_id: str
    digest: str
    since: float
    reported: float


@dataclass
class ModelCheck:
    events: int = 0
    foreign: list[str] = field(default_factory=list)  # events of neither model
    out_of_force: list[str] = field(default_factory=list)
    went_back: list[str] = field(default_factory=list)
    late_old: list[str] = field(default_factory=list)
    undesired_switches: list[str] = field(default_factory=list)
    max_late_ms: float = 0.0  # the latest old-model event after its report (within the slack: fine)
    counts: dict[str, int] = field(default_factory=dict)  # events per digest

    def problems(self) -> dict[str, bool]:
        """For `ScenarioResult.checks`: problem -> whether it failed (examples in the text)."""
        examples = {name: getattr(self, name)[:_EXAMPLES] for name in
                    ("foreign", "out_of_force", "went_back", "late_old", "undesired_switches")}  # fmt: skip
        return {
            f"{len(self.foreign)} events of another model, e.g. {examples['foreign']}": bool(self.foreign),
            f"{len(self.out_of_force)} events of a model not in force, e.g. {examples['out_of_force']}":
                bool(self.out_of_force),
            f"{len(self.went_back)} partitions went back to an older model: {examples['went_back']}":
                bool(self.went_back),
            f"{len(self.late_old)} old-model events after the swap report, e.g. {examples['late_old']}":
                bool(self.late_old),
            f"switches to undesired models: {examples['undesired_switches']}": bool(self.undesired_switches),
        }  # fmt: skip

    def summary(self) -> dict[str, object]:
        return {"events_checked": self.events, "events_per_digest": self.counts,
                "out_of_force": len(self.out_of_force), "went_back": len(self.went_back),
                "late_old": len(self.late_old), "max_late_ms": round(self.max_late_ms, 1)}  # fmt: skip


def _at(steps: Steps, t: float) -> str:
    return steps[bisect.bisect_right([s for s, _ in steps], t) - 1][1]


def _takes(steps: Steps, lo: float, hi: float, value: str) -> bool:
    """Whether the step function equals `value` somewhere in [lo, hi]."""
    return _at(steps, lo) == value or any(lo < start <= hi and v == value for start, v in steps)


def check_models(
    events: Iterable[OutEvent], *, models: Sequence[str], configured: str,
    desired: Sequence[tuple[float, str]], switches: Sequence[Switch], ended: dict[str, float],
) -> ModelCheck:  # fmt: skip
    """The rules of the module docstring. `desired`: (moment the write of `rollout set` began, digest);
    `ended`: kill time per incarnation killed (others ran to the end)."""
    d_steps: Steps = [(float("-inf"), configured), *sorted(desired)]
    r_steps: dict[str, Steps] = defaultdict(lambda: [(float("-inf"), configured)])
    reported: dict[str, list[Switch]] = defaultdict(list)
    result = ModelCheck()
    previous: dict[str, str] = {}
    for switch in sorted(switches, key=lambda s: s.since):
        if switch.digest == previous.get(switch.worker_id, configured):
            continue  # a periodic report, or the report at start of the configured model
        r_steps[switch.worker_id].append((switch.since, switch.digest))
        reported[switch.worker_id].append(switch)
        if _at(d_steps, switch.since) != switch.digest:
            result.undesired_switches.append(f"{switch.worker_id} -> {switch.digest[:19]} {switch.since:.3f}")
        previous[switch.worker_id] = switch.digest
    by_run: dict[tuple[str, int], list[OutEvent]] = defaultdict(list)
    late_after: dict[str, list[tuple[float, float, str]]] = {  # (since, reported, the model switched from)
        w: [(s.since, s.reported, _at(r_steps[w], s.since - 1e-6)) for s in ss] for w, ss in reported.items()
    }  # fmt: skip
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        result.events += 1
        counts[event.digest] += 1
        label = f"{event.listing_id}@{event.worker_id}"
        if event.digest not in models:
            result.foreign.append(label)
            continue
        lo, hi, digest = event.produced, event.appended, event.digest
        if not (_takes(d_steps, lo, hi, digest) or _takes(r_steps[event.worker_id], lo, hi, digest)):
            result.out_of_force.append(f"{label} {event.digest[:19]} produced {lo:.3f} appended {hi:.3f}")
        # The latest report of a switch away from this event's model before it was appended.
        away = [r for since, r, old in late_after.get(event.worker_id, ()) if old == digest and since <= hi]
        if away and hi > away[-1] and _at(r_steps[event.worker_id], hi) != digest:
            late = hi - away[-1]
            result.max_late_ms = max(result.max_late_ms, late * 1000)
            if late > LATE_SLACK_S:
                result.late_old.append(f"{label} {late * 1000:.0f} ms after the report")
        by_run[(event.worker_id, event.partition)].append(event)
    result.counts = dict(counts)
    for (worker, partition), run in sorted(by_run.items()):
        sequence = [d for _, d in r_steps[worker]]
        pending = _at(d_steps, ended[worker]) if worker in ended else sequence[-1]
        if pending != sequence[-1]:
            sequence.append(pending)  # switched before the kill, never reported
        if not _follows(sorted(run, key=lambda e: e.offset), sequence):
            result.went_back.append(f"{worker} partition {partition}")
    return result


def _follows(run: Sequence[OutEvent], sequence: Sequence[str]) -> bool:
    """The digests of `run` (offset order) step through `sequence` forwards only."""
    index = -1
    for event in run:
        if index >= 0 and sequence[index] == event.digest:
            continue
        later = [i for i in range(index + 1, len(sequence)) if sequence[i] == event.digest]
        if not later:
            return False
        index = later[0]
    return True


@dataclass(frozen=True)
class Pauses:
    """Longest output gap (ms) within each swap window, and the gaps between distinct append instants that
    touch no swap or fault window (the steady rhythm of the output)."""

    per_swap_ms: list[float]
    median_gap_ms: float
    p99_gap_ms: float
    max_gap_ms: float


def stamp_seconds(iso: str) -> float:
    """A control record's timestamp (`set_at`, `reported_at`, `since`: ISO 8601, `Z`) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def swap_pauses(output_times: Sequence[float], swaps: Sequence[tuple[float, float]],
                faults: Sequence[tuple[float, float]] = ()) -> Pauses:  # fmt: skip
    """`swaps`: (set began, worker reported the new model) per swap; `faults`: other windows to leave out
    of the baseline (a kill and its recovery)."""
    instants = sorted(set(output_times))
    gaps = list(itertools.pairwise(instants))

    def longest(start: float, end: float) -> float:
        inside = [b - a for a, b in gaps if b >= start and a <= end]
        return round(max(inside, default=0.0) * 1000, 1)

    busy = [*swaps, *faults]
    steady = sorted(b - a for a, b in gaps if not any(b >= s and a <= e for s, e in busy))
    if not steady:
        return Pauses([longest(s, e) for s, e in swaps], 0.0, 0.0, 0.0)
    p99 = steady[min(len(steady) - 1, int(0.99 * len(steady)))]
    return Pauses([longest(s, e) for s, e in swaps], round(statistics.median(steady) * 1000, 1),
                  round(p99 * 1000, 1), round(steady[-1] * 1000, 1))  # fmt: skip
