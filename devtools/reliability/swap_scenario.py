"""`enrich chaos model-swap`: hot swaps under load (issue 11). One worker enriches paced traffic while
`enrich rollout set` (the same `set_desired` the command runs) swaps its model three times at random
moments, A -> B -> A -> B, between two distinct tiny models; during one swap to B the worker is killed
(-9) the moment its /metrics show it preparing B (swap_kill.py; `kill_landed` in the details says where the
kill did land) and restarted, as a supervisor would, on its configured model A: it must follow the control
topic to B by itself.

Accounted like every scenario (0 lost, duplicates within the kill's in-flight window) and checked by
`swap_rules.check_models` (every event's digest one of the two and in force when its batch ran, per input
partition no going back, no old-model event after the swap's report) and the worker's own
`enrich_mixed_batches_total` (scraped every 0.25 s, must stay 0). Every swap must be done: the incarnation
then running reports the set digest within the recovery timeout. Each incarnation gets its own worker id
(`<id>-<n>`), so its events and reports tell it apart. The swap pause (longest output gap while a swap
is underway, next to the steady gaps between appends) goes into the details, and so do the preparation
times the worker logged (`prepare_ms`, model load, backend and probe of each completed swap).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devtools.harness.listings import Record, valid_listings
from devtools.reliability.network_scenarios import MetricsSampler
from devtools.reliability.run import Run, ScenarioResult, Services
from devtools.reliability.swap_kill import (
    SWAPS_TOTAL,
    kill_landing,
    prepare_times_ms,
    swaps_done,
    watch_preparation,
)
from devtools.reliability.swap_rules import (
    ModelCheck,
    OutEvent,
    Switch,
    check_models,
    stamp_seconds,
    swap_pauses,
)
from devtools.services.ports import LOOPBACK, free_port
from workers.model.served import ServedModel
from workers.rollout import RolloutTarget, set_desired
from workers.runtime.control import ControlReader, DesiredModel, WorkerReport

if TYPE_CHECKING:  # scenarios.py registers this scenario: it imports this module
    from devtools.reliability.scenarios import ChaosOptions

__all__ = ["model_swap", "second_model"]

SWAPS = 3
_MIXED = "enrich_mixed_batches_total"


def second_model(services: Services) -> Path:
    """Model B: the one the services name, else a tiny model of another seed trained into the run dir
    (seconds; only its digest tells it from the tiny model A)."""
    if services.other_model_dir is not None:
        return services.other_model_dir
    from devtools.paths import FIXTURE_OFFERS
    from training.build import build_tiny_model

    print("  training a second tiny model (model B) ...", flush=True)
    return build_tiny_model(services.run_dir / "model-swap-b", FIXTURE_OFFERS, seed=29)


class _Control:
    """Follows the control topic: the desired records and the reports of this group, in order."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.group = group
        self.desired: list[DesiredModel] = []
        self.reports: list[WorkerReport] = []
        self._reader = ControlReader(bootstrap, topic)
        self._reader.start()

    def poll(self, timeout_s: float = 0.0) -> None:
        for _, record in self._reader.poll(timeout_s):
            if isinstance(record, DesiredModel) and record.group == self.group:
                self.desired.append(record)
            elif isinstance(record, WorkerReport) and record.group == self.group:
                self.reports.append(record)

    def runs(self, worker_id: str, digest: str) -> WorkerReport | None:
        """The first report of `worker_id` running `digest` after the last desired record was set."""
        since = stamp_seconds(self.desired[-1].set_at) if self.desired else 0.0
        return next((r for r in self.reports if r.worker_id == worker_id and r.digest == digest
                     and stamp_seconds(r.reported_at) >= since), None)  # fmt: skip

    def close(self) -> None:
        self._reader.close()


def model_swap(services: Services, options: ChaosOptions) -> ScenarioResult:
    model_a, model_b = services.model_dir, second_model(services)
    a, b = ServedModel.load(model_a).digest, ServedModel.load(model_b).digest
    if a == b:
        raise ValueError(f"model-swap needs two distinct models; {model_a} and {model_b} are both {a[:19]}")
    kafka = services.kafka
    control_topic = f"chaos-model-swap-{time.time_ns():x}.control"
    kafka.create_topic(control_topic, 1, config={"cleanup.policy": "compact"})
    metrics_port = free_port()
    # INFO: the worker logs each swap ("prepared in ...") and the kill's landing is read from its log.
    env = {"ENRICH_SESSION_TIMEOUT_MS": str(options.session_timeout_ms), **options.worker_env,
           "ENRICH_CONTROL_TOPIC": control_topic, "ENRICH_CONTROL_REPORT_S": "0.5",
           "ENRICH_METRICS_PORT": str(metrics_port), "ENRICH_METRICS_HOST": LOOPBACK,
           "ENRICH_LOG_LEVEL": "INFO"}  # fmt: skip
    run = Run(services, "model-swap", worker_env=env)
    base_id, group = run.worker.env["ENRICH_WORKER_ID"], run.worker.env["ENRICH_GROUP_ID"]
    run.worker.env["ENRICH_WORKER_ID"] = f"{base_id}-0"
    control = _Control(kafka.bootstrap_servers, control_topic, group)
    sampler = MetricsSampler(metrics_port, interval_s=0.25, names=(_MIXED, SWAPS_TOTAL))
    target = RolloutTarget(kafka.bootstrap_servers, control_topic, group, set_by="enrich chaos model-swap")
    rng = random.Random(options.seed)
    produced: dict[str, float] = {}
    events: list[tuple[str, str, str, float]] = []  # listing_id, digest, worker_id, appended

    def seen(event: dict[str, Any], appended: float) -> None:
        events.append((event["listing_id"], event["model"]["digest"], event["worker_id"], appended))

    run.ledger.on_output = seen
    swaps_over = threading.Event()
    ended: dict[str, float] = {}
    details: dict[str, object] = {"model_a": a[:19], "model_b": b[:19]}

    def step(seconds: float) -> None:
        run.step(seconds)
        control.poll()

    def reported(worker_id: str, digest: str) -> bool:
        control.poll()
        return control.runs(worker_id, digest) is not None

    def set_and_kill(model_dir: Path, digest: str) -> dict[str, object]:
        """Set `model_dir`, kill -9 the worker the moment it reads as preparing it (else once the watch
        gives up), restart it on model A; where the kill landed."""
        done_before = swaps_done(sampler.url)
        log_from = run.worker.log_path.stat().st_size
        set_desired(target, str(model_dir), wait_s=0, stale_s=60)
        killed = run.worker.env["ENRICH_WORKER_ID"]
        watch = watch_preparation(sampler.url, done_before, partial(reported, killed, digest))
        run.fault()
        run.worker.kill()
        ended[killed] = time.time()
        run.fault_over()
        with run.worker.log_path.open("rb") as log:  # all the killed incarnation wrote since the set
            log.seek(log_from)
            killed_log = log.read().decode(errors="replace")
        run.worker.env["ENRICH_WORKER_ID"] = f"{base_id}-{len(ended)}"
        run.worker.start()
        landed = kill_landing(watch, killed_log, reported(killed, digest))
        return {"kill_landed": landed, "preparing_seen_after_ms": watch.preparing_after_ms,
                "watch_gave_up": watch.gave_up or None, "watch_scrapes": watch.scrapes}  # fmt: skip

    try:
        listings = valid_listings(None, prefix="S", seed=options.seed, unique_titles=options.unique_titles)
        run.produce(_stamped(listings, options, swaps_over, produced), options.rate)
        run.worker.start()
        run.wait_for_output_after(run.worker.starts[-1], options.recovery_timeout_s)
        kill_at = rng.choice(range(0, SWAPS, 2)) if options.kills else None  # a swap to B
        done, windows, kill_window = 0, [], None
        for index in range(SWAPS):
            model_dir, digest = (model_b, b) if index % 2 == 0 else (model_a, a)
            pause_until = time.monotonic() + rng.uniform(*options.kill_delay_s)
            while time.monotonic() < pause_until:
                step(min(0.2, max(0.0, pause_until - time.monotonic())))
            if index == kill_at:
                details.update(kill_swap=index + 1, **set_and_kill(model_dir, digest))
            else:
                set_desired(target, str(model_dir), wait_s=0, stale_s=60)
            while len(control.desired) <= index:  # the record `set` wrote: its set_at starts the swap
                control.poll(0.5)
            set_at = stamp_seconds(control.desired[-1].set_at)
            worker_id = run.worker.env["ENRICH_WORKER_ID"]
            deadline = time.monotonic() + options.recovery_timeout_s
            while control.runs(worker_id, digest) is None and time.monotonic() < deadline and not run.gave_up:
                step(0.1)
            report = control.runs(worker_id, digest)
            if report is None:
                break
            done += 1
            window = (set_at, stamp_seconds(report.reported_at))
            if index == kill_at:
                kill_window = window
            else:
                windows.append(window)
        swaps_over.set()
        result = run.finish(options.timeout_s, kills=len(ended), swaps_done=done, **details)
    finally:
        swaps_over.set()
        sampler.close()
        run.close()
    try:
        control.poll(1.0)
        check = _check(run, control, events, produced, (a, b), a, ended)
    finally:
        control.close()
    pauses = swap_pauses(result.output_times, windows, [kill_window] if kill_window else [])
    kill_gap = swap_pauses(result.output_times, [kill_window]).per_swap_ms[0] if kill_window else None
    mixed = max((values.get(_MIXED, 0.0) for _, values in sampler.samples), default=None)
    result.details.update(
        **check.summary(), swap_pause_ms=pauses.per_swap_ms, kill_swap_gap_ms=kill_gap,
        steady_gap_ms={"median": pauses.median_gap_ms, "p99": pauses.p99_gap_ms, "max": pauses.max_gap_ms},
        mixed_batches=mixed, prepare_ms=prepare_times_ms(run.worker.log_path.read_text(errors="replace")),
    )  # fmt: skip
    result.checks.update({
        f"{done} of {SWAPS} swaps done": done < SWAPS,
        f"{mixed} mixed batches counted by the worker": bool(mixed),
        "the worker's /metrics never read": mixed is None,
        **check.problems(),
    })  # fmt: skip
    return result


def _check(run: Run, control: _Control, events: list[tuple[str, str, str, float]], produced: dict[str, float],
           models: tuple[str, str], configured: str, ended: dict[str, float]) -> ModelCheck:  # fmt: skip
    """The model rules over every attribute event whose input was produced (others: `unknown` in the
    tally)."""
    assert run.producer is not None
    position = {expected.label: place for place, expected in run.producer.snapshot().items()}
    outs = [
        OutEvent(listing_id, digest, worker, produced[listing_id], appended, *position[listing_id])
        for listing_id, digest, worker, appended in events
        if listing_id in position and listing_id in produced
    ]  # fmt: skip
    switches = [Switch(r.worker_id, r.digest, stamp_seconds(r.since), stamp_seconds(r.reported_at))
                for r in control.reports]  # fmt: skip
    desired = [(stamp_seconds(d.set_at), d.digest) for d in control.desired]
    return check_models(outs, models=models, configured=configured, desired=desired, switches=switches,
                        ended=ended)  # fmt: skip


def _stamped(records: Iterator[Record], options: ChaosOptions, swaps_over: threading.Event,
             produced: dict[str, float]) -> Iterator[Record]:  # fmt: skip
    """`options.size` records, then more until the swaps are over (every swap lands on flowing traffic
    however long a restart takes); each record's moment of production (the producer takes a record only
    when it is due and produces it at once) by label."""
    for index, record in enumerate(records):
        if index >= options.size and (options.rate <= 0 or swaps_over.is_set()):
            return
        produced[record.expected.label] = time.time()
        yield record
