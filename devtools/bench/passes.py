"""One benchmark pass: fresh topics, traffic in, `enrich worker` subprocesses, attribute events out.

Workers run as real `enrich worker` processes (the deployed thing: its own interpreter, GIL and event
loop), configured through ENRICH_* variables. A pass also records the CPU seconds each process spent
while it ran, because on a small machine the worker, Triton, Kafka and the bench share the cores.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from devtools.bench.mix import Shape, mix_from_labels, mix_labels, scrape_mix
from devtools.harness.listings import expect_output, listing_records
from devtools.harness.producer import PacedProducer, produce_records
from devtools.harness.reader import OutputCollector
from devtools.harness.worker_process import WorkerPool
from devtools.services.ports import free_ports

__all__ = ["BenchContext", "PassResult", "percentile", "steady_rate"]

INPUT_PARTITIONS = 4


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def steady_rate(times_ms: list[int], skip_fraction: float = 0.05) -> float:
    """Events/s between the first `skip_fraction` of outputs (start-up, first batches) and the last one.

    CreateTime has millisecond resolution and the cache-hit path produces a whole chunk in well under a
    millisecond, so the span counts the last millisecond too: a small pass whose outputs all share one
    timestamp reads as at least that rate instead of 0/s (which made the bench smoke test flaky).
    """
    ordered = sorted(times_ms)
    first = int(len(ordered) * skip_fraction)
    if len(ordered) - 1 - first <= 0:
        return 0.0
    span_s = (ordered[-1] - ordered[first] + 1) / 1000
    return (len(ordered) - 1 - first) / span_s


@dataclass
class PassResult:
    name: str
    events: int
    workers: int
    events_per_s: float
    seconds: float
    cache_hits: int
    cpu_s: dict[str, float]
    settings: dict[str, str]
    latencies_ms: list[float] = field(default_factory=list)
    batch_mix: dict[str, int] = field(default_factory=dict)  # "rows x seq" -> inference calls (/metrics)

    def mix(self) -> Counter[Shape]:
        return mix_from_labels(self.batch_mix)

    def summary(self) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k != "latencies_ms"}
        if self.latencies_ms:
            row["latency_ms"] = {f"p{q}": round(percentile(self.latencies_ms, q / 100), 2)
                                 for q in (50, 95, 99)}  # fmt: skip
        return row


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for proc in (process, *process.children(recursive=True)):
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


@dataclass
class BenchContext:
    """Where passes run: the Kafka cluster, the services' PIDs, the worker environment and a run folder."""

    kafka: Any  # localservices KafkaCluster (create_topic, bootstrap_servers)
    base_env: dict[str, str]
    run_dir: Path
    service_pids: dict[str, list[int]]
    timeout_s: float = 300.0
    _serial: int = 0

    def _topics(self, name: str) -> tuple[str, str, str]:
        self._serial += 1
        stem = f"bench-{os.getpid()}-{self._serial}-{name}"
        topics = (f"{stem}.in", f"{stem}.out", f"{stem}.dlq")
        self.kafka.create_topic(topics[0], partitions=INPUT_PARTITIONS)
        self.kafka.create_topic(topics[1], partitions=1)
        self.kafka.create_topic(topics[2], partitions=1)
        return topics

    def _env(self, topics: tuple[str, str, str], group: str, overrides: Mapping[str, str]) -> dict[str, str]:
        return {**self.base_env, "ENRICH_INPUT_TOPIC": topics[0], "ENRICH_OUTPUT_TOPIC": topics[1],
                "ENRICH_DLQ_TOPIC": topics[2], "ENRICH_GROUP_ID": group, **overrides}  # fmt: skip

    def _cpu(self, worker_pids: list[int]) -> dict[str, float]:
        cpu = {name: _cpu_seconds(pids) for name, pids in self.service_pids.items()}
        cpu["workers"] = _cpu_seconds(worker_pids)
        if len(worker_pids) > 1:  # the split between worker processes (the scaling curve)
            cpu.update({f"worker-{i}": _cpu_seconds([pid]) for i, pid in enumerate(worker_pids)})
        # Every process of the machine (others' work included): names what took the cores when ours did not.
        times = psutil.cpu_times()
        cpu["machine"] = sum(getattr(times, k) for k in times._fields if k not in ("idle", "iowait"))
        own = psutil.Process().cpu_times()
        cpu["bench"] = own.user + own.system  # this process only: services and workers are its children
        return cpu

    def _backlog(self, topic: str, prefix: str, titles: list[str], count: int) -> None:
        records = listing_records(count, titles, prefix=prefix)
        produce_records(self.kafka.bootstrap_servers, topic, records, timeout_s=60, linger_ms=20)

    def _await(self, collector: OutputCollector, pool: WorkerPool, count: int, what: str) -> None:
        if not collector.wait_for(count, self.timeout_s, pool.alive):
            pool.stop(timeout_s=10)
            raise RuntimeError(f"{what}: {collector.count}/{count} attribute events "
                               f"({'worker exited' if not pool.alive() else 'timed out'})\n{pool.log_tail()}")

    def _await_group(self, group: str, members: int, pool: WorkerPool) -> None:
        from devtools.reliability.group_state import wait_until_settled

        if not wait_until_settled(self.kafka.bootstrap_servers, group, members, self.timeout_s,
                                  between=lambda: time.sleep(0.2) or pool.alive()):  # fmt: skip
            raise RuntimeError(f"group {group}: {members} workers never all held partitions\n"
                               f"{pool.log_tail()}")

    def backlog_pass(self, name: str, titles: list[str], count: int, overrides: Mapping[str, str], *,
                     workers: int = 1, profile_to: Path | None = None) -> PassResult:  # fmt: skip
        """Produce `count` listings, start the workers, and time how fast they drain them. One worker: the
        backlog is there before it starts; several: it is produced once all of them hold partitions."""
        topics = self._topics(name)
        if workers == 1:
            self._backlog(topics[0], name, titles, count)
        collector = OutputCollector(self.kafka.bootstrap_servers, topics[1])
        env = self._env(topics, f"bench-{name}-{self._serial}", overrides)
        pool = WorkerPool(workers, env, self.run_dir / name, profile_to, metrics_ports=free_ports(workers))
        try:
            if workers > 1:  # else the first worker drains the backlog alone while the group forms
                self._await_group(env["ENRICH_GROUP_ID"], workers, pool)
                self._backlog(topics[0], name, titles, count)
            self._await(collector, pool, 1, name)
            cpu_before, started = self._cpu(pool.pids), time.perf_counter()
            self._await(collector, pool, count, name)
            seconds = time.perf_counter() - started
            cpu = {k: round(v - cpu_before[k], 2) for k, v in self._cpu(pool.pids).items()}
            mix = scrape_mix(pool.metrics_urls)
        finally:
            pool.stop()
            collector.close()
        return PassResult(name, count, workers, steady_rate(collector.times_ms), round(seconds, 3),
                          collector.hits, cpu, dict(overrides), batch_mix=mix_labels(mix))  # fmt: skip

    def paced_pass(self, name: str, titles: list[str], rate: float, duration_s: float,
                   overrides: Mapping[str, str]) -> PassResult:  # fmt: skip
        """Start a worker, warm it up, then produce at `rate`/s: latency from event_time to the output."""
        topics = self._topics(name)
        collector = OutputCollector(self.kafka.bootstrap_servers, topics[1])
        pool = WorkerPool(1, self._env(topics, f"bench-{name}-{self._serial}", overrides),
                          self.run_dir / name)  # fmt: skip
        try:
            warmup = 200
            self._backlog(topics[0], "warm", titles, warmup)
            self._await(collector, pool, warmup, name)
            event_ms: dict[bytes, int] = {}  # each listing's event_time, stamped as it is produced
            live = expect_output(listing_records(None, titles, prefix=name, stamps=event_ms))
            producer = PacedProducer(self.kafka.bootstrap_servers, topics[0], live, rate,
                                     duration_s=duration_s, linger_ms=2)  # fmt: skip
            cpu_before, started = self._cpu(pool.pids), time.perf_counter()
            if not producer.start().wait(duration_s + 60) or producer.errors:
                raise RuntimeError(f"{name}: producing failed: {producer.errors[:3] or 'timed out'}")
            self._await(collector, pool, warmup + len(event_ms), name)
            seconds = time.perf_counter() - started
            cpu = {k: round(v - cpu_before[k], 2) for k, v in self._cpu(pool.pids).items()}
        finally:
            pool.stop()
            collector.close()
        latencies = [float(t - event_ms[k]) for k, t in zip(collector.keys, collector.times_ms, strict=True)
                     if k in event_ms]
        return PassResult(name, len(latencies), 1, producer.achieved_rate, round(seconds, 3), collector.hits,
                          cpu, dict(overrides), latencies)  # fmt: skip
