"""What the soak scenario samples and how it judges "flat" (soak.py runs it).

`UsageSampler` (a thread) records every `interval_s`: the worker's resident memory and open file
descriptors (psutil, whichever incarnation runs now) and the group's committed lag read from the broker
(high watermark minus committed offset, summed over the input partitions; it counts what is consumed but
not yet committed too, and goes on counting while the worker is down, where the worker's own
`enrich_consumer_lag` gauge is silent) and, with `CpuSplit`, the CPU each process used since the last
sample (worker, the harness itself, redis-server, Kafka, everything else on the machine): on 2 shared
cores, a worker that falls behind may only be starved. `SoakEvent` is the worker's start or one fault,
with the moments the soak loop saw it end, the output come back and the lag come back to near 0.

Flat: the samples outside every event's window, in order, cut into quarters; the median of the last
quarter against the median of the second (the first holds the warm-up of the allocator and of the
inference session). `plot` draws RSS, fds, lag and output rate over time with the events shaded.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from confluent_kafka import Consumer, TopicPartition

from devtools.harness.worker_process import WorkerProcess, process_usage
from workers.runtime.kafka_security import client_config

__all__ = [
    "CpuSplit",
    "Sample",
    "SoakEvent",
    "UsageSampler",
    "calm_from",
    "cpu_by_quarter",
    "growth",
    "plot",
    "steady",
]

MIN_PER_QUARTER = 3  # fewer samples than this in a quarter: the growth is not judged (and the run fails)


@dataclass(frozen=True)
class Sample:
    at: float  # wall clock, s
    rss_bytes: int | None  # None: no worker running at that moment (between a kill and the restart)
    fds: int | None
    lag: int | None  # committed lag over every input partition; None: the broker did not answer
    cpu: dict[str, float] = field(default_factory=dict)  # cores used since the last sample, per process


class CpuSplit:
    """Cores each named process (with its children) used between two calls, and the rest of the machine.

    `pids()` names the processes now; a restarted worker has a new pid, so its first interval is skipped.
    The names in `alone` are counted without their children (the harness started the others)."""

    def __init__(self, pids: Callable[[], dict[str, int | None]], alone: frozenset[str] = frozenset()
                 ) -> None:  # fmt: skip
        self._pids, self._alone = pids, alone
        self._last: dict[str, tuple[int, float, float]] = {}  # name -> (pid, at, cpu seconds)
        self._last_machine: tuple[float, float] | None = None  # (busy cpu seconds, at)

    def sample(self) -> dict[str, float]:
        now = time.monotonic()
        cores: dict[str, float] = {}
        for name, pid in self._pids().items():
            used = _cpu_s(pid, children=name not in self._alone) if pid is not None else None
            if pid is None or used is None:
                self._last.pop(name, None)
                continue
            last = self._last.get(name)
            if last is not None and last[0] == pid and now > last[1]:
                cores[name] = round((used - last[2]) / (now - last[1]), 3)
            self._last[name] = (pid, now, used)
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        if self._last_machine is not None and now > self._last_machine[1]:
            total = (busy - self._last_machine[0]) / (now - self._last_machine[1])
            cores["machine"] = round(total, 3)
            cores["other"] = round(max(0.0, total - sum(v for k, v in cores.items() if k != "machine")), 3)
        self._last_machine = (busy, now)
        return cores


def _cpu_s(pid: int, *, children: bool) -> float | None:
    try:
        process = psutil.Process(pid)
        tree = [process, *(process.children(recursive=True) if children else ())]
        return sum(t.user + t.system for t in (p.cpu_times() for p in tree))
    except psutil.Error:
        return None


@dataclass
class SoakEvent:
    """The worker's start or one fault; wall-clock moments, None until seen."""

    kind: str  # "start", "kill", "redis-outage"
    start: float
    end: float | None = None  # the worker (re)started, or the service back
    back: float | None = None  # the broker appended the first attribute event after `end`
    drained: float | None = None  # from this sample after `back` on, the lag stayed near 0 (`calm_from`)

    def window(self, settle_s: float, until: float, *, lag: bool) -> tuple[float, float]:
        """The span left out of the flatness figures: for RSS and fds until `settle_s` after the output
        came back (a restarted worker fills its memory on the first batches), for the lag until it was
        near 0 again; `until` where that never happened."""
        if lag:
            return self.start, self.drained if self.drained is not None else until
        return self.start, self.back + settle_s if self.back is not None else until


class UsageSampler:
    """Samples the worker's RSS and fds and the group's committed lag every `interval_s` (a thread)."""

    def __init__(self, worker: WorkerProcess, bootstrap: str, group: str, topic: str, partitions: int,
                 interval_s: float, cpu: CpuSplit | None = None) -> None:  # fmt: skip
        self.worker = worker
        self._cpu = cpu
        self.samples: list[Sample] = []
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        # The worker's group id, to read its commits; never subscribes, so never a member of the group.
        self._consumer = Consumer(client_config(bootstrap, {"group.id": group, "enable.auto.commit": False,
                                                            "log_level": 3}))  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="soak-sampler",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            pid = self.worker.pid
            usage = process_usage(pid) if pid is not None else None
            rss, fds = usage if usage is not None else (None, None)
            cpu = self._cpu.sample() if self._cpu is not None else {}
            self.samples.append(Sample(time.time(), rss, fds, self.committed_lag(), cpu))

    def committed_lag(self) -> int | None:
        """High watermark minus the group's committed offset, summed (nothing committed: the whole log)."""
        try:
            committed = self._consumer.committed(self._partitions, timeout=5)
            lag = 0
            for tp in committed:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                lag += high - (tp.offset if tp.offset >= 0 else low)
            return lag
        except Exception:  # coordinator loading or moving: no figure this time
            return None

    def latest_lag_after(self, moment: float) -> int | None:
        """The lag of the newest sample taken at or after `moment` (None: none yet)."""
        samples = self.samples
        return samples[-1].lag if samples and samples[-1].at >= moment else None

    def close(self) -> None:
        """Stop sampling; again: nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=15)
        self._consumer.close()


def calm_from(samples: Sequence[Sample], after: float, near_zero: float, hold_s: float) -> float | None:
    """The first sample's moment, at or after `after`, from which the lag stayed at most `near_zero` for
    `hold_s` (a lag still building up after a start is low for a moment too, and is not back to near 0)."""
    calm: float | None = None
    for sample in samples:
        if sample.at < after or sample.lag is None:
            continue
        if sample.lag > near_zero:
            calm = None
        elif calm is None:
            calm = sample.at
        if calm is not None and sample.at - calm >= hold_s:
            return calm
    return None


def steady(samples: Sequence[Sample], windows: Sequence[tuple[float, float]], start: float,
           end: float) -> list[Sample]:  # fmt: skip
    """The samples within [start, end] outside every window."""
    return [s for s in samples
            if start <= s.at <= end and not any(a <= s.at <= b for a, b in windows)]  # fmt: skip


def growth(samples: Sequence[Sample], value: Callable[[Sample], float | None]) -> tuple[float, float] | None:
    """(median of the second quarter, median of the last) of the samples' values in order; None where a
    quarter holds fewer than MIN_PER_QUARTER of them."""
    values = [v for s in samples if (v := value(s)) is not None]
    quarter = len(values) // 4
    if quarter < MIN_PER_QUARTER:
        return None
    return statistics.median(values[quarter : 2 * quarter]), statistics.median(values[-quarter:])


def plot(path: Path, samples: Sequence[Sample], worker_lag: Sequence[tuple[float, float]],
         output_times: Sequence[float], events: Sequence[SoakEvent], *, t0: float, rate: float,
         near_zero: float, interval_s: float) -> Path:  # fmt: skip
    """RSS, fds, lag (committed, and the worker's gauge) and output rate against seconds since `t0`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    xs = [s.at - t0 for s in samples]
    rss_ax, fds_ax, lag_ax, out_ax = axes
    rss_ax.plot(xs, [None if s.rss_bytes is None else s.rss_bytes / 2**20 for s in samples], color="tab:blue")
    rss_ax.set_ylabel("worker RSS (MiB)")
    fds_ax.plot(xs, [s.fds for s in samples], color="tab:green")
    fds_ax.set_ylabel("open fds")
    lag_ax.plot(xs, [s.lag for s in samples], color="tab:red", label="committed (broker)")
    lag_ax.plot([t - t0 for t, _ in worker_lag], [v for _, v in worker_lag], color="tab:orange",
                linewidth=0.8, label="enrich_consumer_lag (worker)")  # fmt: skip
    lag_ax.axhline(near_zero, color="grey", linestyle=":", label=f"near 0 ({near_zero:,.0f})")
    lag_ax.set_ylabel("lag (listings)")
    lag_ax.legend(loc="upper right", fontsize=8)
    edges = [t0 + i * interval_s for i in range(int((xs[-1] if xs else 0) / interval_s) + 2)]
    counts = [0] * len(edges)
    for moment in output_times:
        index = int((moment - t0) // interval_s)
        if 0 <= index < len(counts):
            counts[index] += 1
    out_ax.step([e - t0 for e in edges], [c / interval_s for c in counts], where="post", color="tab:purple")
    out_ax.axhline(rate, color="grey", linestyle=":", label=f"offered {rate:,.0f}/s")
    out_ax.set_ylabel("attribute events / s")
    out_ax.set_xlabel("seconds since the soak traffic started")
    out_ax.legend(loc="upper right", fontsize=8)
    for event in events:
        end = event.drained or event.back or event.end or event.start
        for ax in axes:
            ax.axvspan(event.start - t0, end - t0, color="grey", alpha=0.15)
        rss_ax.annotate(event.kind, (event.start - t0, 1.0), xycoords=("data", "axes fraction"),
                        fontsize=7, va="top")  # fmt: skip
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle("soak: worker RSS, open fds, lag and output over time (shaded: start and faults until "
                 "the lag is near 0)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cpu_by_quarter(samples: Sequence[Sample], start: float, end: float) -> list[dict[str, float]]:
    """Mean cores per process in each quarter of [start, end] (every sample, faults included)."""
    quarters: list[dict[str, float]] = []
    span = (end - start) / 4
    for q in range(4):
        inside = [s.cpu for s in samples if start + q * span <= s.at < start + (q + 1) * span and s.cpu]
        names = sorted({name for cpu in inside for name in cpu})
        quarters.append({n: round(statistics.fmean(c[n] for c in inside if n in c), 2) for n in names})
    return quarters
