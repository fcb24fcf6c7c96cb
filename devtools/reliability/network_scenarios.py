"""Network faults between the worker and one service, through the chaos proxy (proxy.py), issue 15.

- slow-redis:  Redis answers slower than the cache client's 0.25 s socket timeout for `outage_s`.
- slow-triton: each gRPC chunk to and from Triton is held back by the worker's infer timeout for `outage_s`
               (a call takes at least twice that), ENRICH_INFER_TIMEOUT_S set to `INFER_TIMEOUT_S`.
- partition:   the worker's connections to the broker stall (a black hole: no RST, no FIN) for `outage_s`;
               the ledger and the producer of the traffic keep their direct connections.

Each runs the outage scenario of scenarios.py (steady traffic, the fault after `fault_after` of it) with the
worker pointed at the proxy, and adds what the worker did about it to the result's details: from its
/metrics (sampled every 0.5 s) and its INFO log (breaker transitions, pause/resume, Redis failures,
rebalances), split into before the fault, during it and after it healed.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Event, Thread
from typing import TYPE_CHECKING

import orjson

from devtools.reliability.proxy import TcpProxy
from devtools.reliability.run import ScenarioResult, Services
from devtools.services.kafka import KafkaCluster
from devtools.services.ports import LOOPBACK, free_port

if TYPE_CHECKING:  # scenarios.py registers these scenarios: it imports this module
    from devtools.reliability.scenarios import ChaosOptions

__all__ = ["INFER_TIMEOUT_S", "partition", "proxied_kafka", "slow_redis", "slow_triton"]

INFER_TIMEOUT_S = 1.0  # the worker's per-call deadline in slow-triton (its default is 10 s)
REDIS_LATENCY_S = 0.5  # per chunk: a round trip of >= 1 s against the cache client's 0.25 s timeout

# What the worker's INFO log says, by the start of its message.
LOG_SIGNS = {
    "breaker_opened": "circuit breaker closed -> open",
    "breaker_closed": "circuit breaker half-open -> closed",
    "paused": "partitions paused",
    "resumed": "partitions resumed",
    "redis_failures": "redis ",  # the cache's MGET or SET pipeline
    "guard_failures": "version store unavailable",
    "backend_failures": "backend call failed",
    "consumer_errors": "consumer error",
    "revoked": "partitions revoked",
    "lost": "partitions lost",
    "assigned": "partitions assigned",
    "delivery_failed": "delivery failed",
}
METRICS = ("enrich_cache_errors_total", "enrich_cache_hits_total", "enrich_backend_failures_total",
           "enrich_circuit_state", "enrich_events_out_total")  # fmt: skip


class FaultClock:
    """Wall-clock moments of the fault and of its end, recorded by the stop/start callbacks."""

    def __init__(self) -> None:
        self.fault_at: float | None = None
        self.healed_at: float | None = None

    def phase(self, moment: float) -> str:
        if self.fault_at is None or moment < self.fault_at:
            return "before"
        return "during" if self.healed_at is None or moment < self.healed_at else "after"

    def wrap(self, fault: Callable[[], None], heal: Callable[[], None]) -> tuple[Callable[[], None], ...]:
        def start_fault() -> None:
            self.fault_at = time.time()
            fault()

        def end_fault() -> None:
            heal()
            self.healed_at = time.time()

        return start_fault, end_fault


class MetricsSampler:
    """Scrapes the worker's /metrics every `interval_s` (a thread); keeps (wall time, values) samples of
    the series named `names` (a labelled one under its full name, `name{label="..."}`)."""

    def __init__(self, port: int, interval_s: float = 0.5, names: tuple[str, ...] = METRICS) -> None:
        self.url = f"http://{LOOPBACK}:{port}/metrics"
        self.names = names
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = Event()
        self._thread = Thread(target=self._run, args=(interval_s,), name="metrics-sampler", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            values = scrape(self.url, self.names)
            if values is not None:  # else the worker is starting, stopping or restarting
                self.samples.append((time.time(), values))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self, clock: FaultClock) -> dict[str, object]:
        """Per phase: the counters' growth, the highest circuit state; plus the last circuit state."""
        last: dict[str, dict[str, float]] = {}
        first: dict[str, dict[str, float]] = {}
        peak_circuit: Counter[str] = Counter()
        for moment, values in self.samples:
            phase = clock.phase(moment)
            first.setdefault(phase, values)
            last[phase] = values
            peak_circuit[phase] = max(peak_circuit[phase], int(values.get("enrich_circuit_state", 0)))
        out: dict[str, object] = {}
        previous: dict[str, float] = {}
        for phase in ("before", "during", "after"):
            if phase not in last:
                continue
            for name in ("enrich_cache_errors_total", "enrich_cache_hits_total",
                         "enrich_backend_failures_total", "enrich_events_out_total"):  # fmt: skip
                start = previous.get(name, first[phase].get(name, 0.0))
                short = name.removeprefix("enrich_").removesuffix("_total")
                out[f"{short}_{phase}"] = int(last[phase].get(name, 0.0) - start)
            out[f"circuit_peak_{phase}"] = peak_circuit[phase]
            previous = last[phase]
        if self.samples:
            out["circuit_last"] = int(self.samples[-1][1].get("enrich_circuit_state", 0))
        return out


def scrape(url: str, names: tuple[str, ...], timeout_s: float = 2) -> dict[str, float] | None:
    """One read of a worker's /metrics: the series named `names` (a labelled one under its full name);
    None when the endpoint does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.partition("{")[0] in names:
            values[name] = float(value)
    return values


def log_summary(log_path: Path, clock: FaultClock) -> dict[str, float]:
    """How often each of LOG_SIGNS appears in the worker's JSON log, per phase (`paused_during`, ...);
    `rejoined_s`: from the end of the fault to the first partition assignment after it (if any)."""
    counts: Counter[str] = Counter()
    rejoined: list[float] = []
    last_flow = ""
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = orjson.loads(line)
        message = str(entry.get("msg", ""))
        for sign, start in LOG_SIGNS.items():
            if message.startswith(start):
                moment = _parse_ts(str(entry["ts"]))
                counts[f"{sign}_{clock.phase(moment)}"] += 1
                if sign in ("paused", "resumed"):
                    last_flow = sign
                if sign == "assigned" and clock.healed_at is not None and moment >= clock.healed_at:
                    rejoined.append(round(moment - clock.healed_at, 1))
    summary: dict[str, float] = {**dict(sorted(counts.items())), "ended_paused": int(last_flow == "paused")}
    if rejoined:
        summary["rejoined_s"] = rejoined[0]
    return summary


def _parse_ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def _proxied_outage(services: Services, options: ChaosOptions, name: str, proxy: TcpProxy,
                    worker_env: dict[str, str], fault: Callable[[], None], *,
                    redelivers: bool = False) -> ScenarioResult:  # fmt: skip
    """The outage scenario with `fault` on the proxy, healed by pass-through; the worker's metrics and
    log read into the result's details. `redelivers`: see `_outage` (the fault may cost the assignment)."""
    from devtools.reliability.scenarios import _outage

    clock = FaultClock()
    metrics_port = free_port()
    sampler = MetricsSampler(metrics_port)
    env = {"ENRICH_METRICS_PORT": str(metrics_port), "ENRICH_METRICS_HOST": LOOPBACK,
           "ENRICH_LOG_LEVEL": "INFO", **worker_env}  # fmt: skip
    start_fault, end_fault = clock.wrap(fault, proxy.pass_through)
    try:
        result = _outage(services, options, name, worker_env=env, stop=start_fault, start=end_fault,
                         redelivers=redelivers)
    finally:
        sampler.close()
    result.details.update(sampler.summary(clock))
    result.details.update(log_summary(Path(str(result.details["worker_log"])), clock))
    result.details["proxy"] = dataclasses.asdict(proxy.stats)
    return result


def slow_redis(services: Services, options: ChaosOptions) -> ScenarioResult:
    with TcpProxy(services.redis.port) as proxy:
        env = {"ENRICH_REDIS_URL": f"redis://{proxy.address}/0"}
        return _proxied_outage(services, options, "slow-redis", proxy, env,
                               lambda: proxy.add_latency(REDIS_LATENCY_S))  # fmt: skip


def slow_triton(services: Services, options: ChaosOptions) -> ScenarioResult:
    """No cache for this worker: every listing is inferred, so the whole fault reaches the backend."""
    triton = services.triton
    if triton is None:
        raise ValueError("the slow-triton scenario needs a TritonServer")
    with TcpProxy(triton.grpc_port) as proxy:
        env = {"ENRICH_BACKEND": "triton", "ENRICH_TRITON_URL": proxy.address, "ENRICH_REDIS_URL": "",
               "ENRICH_INFER_TIMEOUT_S": str(INFER_TIMEOUT_S)}  # fmt: skip
        return _proxied_outage(services, options, "slow-triton", proxy, env,
                               lambda: proxy.add_latency(INFER_TIMEOUT_S))  # fmt: skip


@contextmanager
def proxied_kafka(run_dir: Path) -> Iterator[tuple[KafkaCluster, TcpProxy]]:
    """A one-node cluster with a second listener, PROXIED, that advertises the proxy's address.

    Kafka clients use the bootstrap address only for their first metadata request; then they connect to
    the addresses the broker advertises for the listener the request came in on. So a proxy in front of
    the ordinary listener would see only the bootstrap connection. Here the worker bootstraps from the
    proxy, which forwards to PROXIED, whose advertised address is the proxy again: every connection the
    worker makes (group coordinator, fetch, produce) goes through it. The traffic producer and the ledger
    use the ordinary listener and never see the fault.
    """
    listener_port = free_port()
    with TcpProxy(listener_port) as proxy:
        kafka = KafkaCluster(run_dir / "kafka-proxied", nodes=1)
        node = kafka.nodes[1]
        kafka.broker_config.update({
            "listeners": f"PLAINTEXT://{node.bootstrap_server},CONTROLLER://{LOOPBACK}:{node.controller_port},"
                         f"PROXIED://{LOOPBACK}:{listener_port}",
            "advertised.listeners": f"PLAINTEXT://{node.bootstrap_server},PROXIED://{proxy.address}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT",
        })  # fmt: skip
        kafka.start()
        try:
            yield kafka, proxy
        finally:
            kafka.stop(graceful=False)  # throwaway


def partition(services: Services, options: ChaosOptions) -> ScenarioResult:
    """On a cluster of its own (the stack's broker has no proxied listener)."""
    with proxied_kafka(services.run_dir) as (kafka, proxy):
        own = dataclasses.replace(services, kafka=kafka)
        env = {"ENRICH_KAFKA_BOOTSTRAP": proxy.address}
        return _proxied_outage(own, options, "partition", proxy, env, proxy.black_hole, redelivers=True)
