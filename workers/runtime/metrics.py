"""Prometheus metrics of one worker, and the HTTP endpoint serving /metrics, /healthz and /readyz.

Every metric lives on the worker's own ``CollectorRegistry`` (not the global default one), so several
workers in one process — as in the tests — never collide; the process, GC and platform collectors that
the default registry would carry are registered on it too. docs/operations.md lists every metric, and the
dashboard and alert rules in deploy/ use only these names (tests/test_dashboards.py checks them against a
real run's /metrics).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from workers.contract.errors import ReasonCode
from workers.contract.events import parse_event_time
from workers.runtime.batch_histogram import BatchHistogram

__all__ = [
    "CIRCUIT_STATE_VALUES",
    "COMMIT_FAILURE_KINDS",
    "REBALANCE_EVENTS",
    "MetricsServer",
    "WorkerMetrics",
    "event_epoch",
    "start_http_endpoint",
]

log = logging.getLogger(__name__)

CIRCUIT_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}

_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Event time to acknowledged output: tens of milliseconds when the worker keeps up (the demo's p50 on a
# laptop), minutes to an hour while a backlog is worked off after an outage.
_FRESH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)  # fmt: skip
REBALANCE_EVENTS = ("assigned", "revoked", "lost")
COMMIT_FAILURE_KINDS = ("offsets", "transaction")


def event_epoch(event_time: str) -> float | None:
    """UNIX seconds of a listing's RFC 3339 `event_time` (no offset: UTC); None when it cannot be read."""
    parsed = parse_event_time(event_time)
    return None if parsed is None else parsed.timestamp()


class WorkerMetrics:
    """All metrics of one worker. Names carry the ``enrich_`` prefix; counters get ``_total`` on export."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.events_in = Counter("enrich_events_in", "Listing events consumed", registry=r)
        self.events_out = Counter("enrich_events_out", "Attribute events produced", registry=r)
        self.dlq = Counter("enrich_dlq", "Events sent to the dead-letter topic", ["code"], registry=r)
        self.cache_hits = Counter("enrich_cache_hits", "Result cache hits", registry=r)
        self.cache_misses = Counter("enrich_cache_misses", "Result cache misses", registry=r)
        self.cache_errors = Counter(
            "enrich_cache_errors", "Cache operations that failed or were skipped (Redis down)", registry=r
        )
        self.guard_local_only = Counter(
            "enrich_guard_local_only",
            "Updates the stale-update guard admitted on this worker's memory alone (version store failed)",
            registry=r,
        )
        self.batch_size = Histogram(
            "enrich_batch_size", "Rows per inference batch", buckets=_BATCH_SIZE_BUCKETS, registry=r
        )
        # The (rows, sequence bucket) shape of every inference call: `enrich bench` replays exactly this mix
        # against the raw backends, so its efficiency compares equal work (issue 13). Bounded labels:
        # rows <= max_batch, seq is one of the model's few buckets.
        self.batch_shapes = Counter(
            "enrich_inference_batches", "Inference calls by shape", ["rows", "seq"], registry=r
        )
        # Wall-clock stamps (Unix seconds) of the first record consumed and the last attribute event the
        # broker acknowledged: a pass's duration from the worker's own clock, not from a poll loop.
        self.first_consumed_at, self.last_output_at = (
            Gauge(name, what, registry=r)
            for name, what in (
                ("enrich_first_consumed_timestamp_seconds", "When the first record was consumed"),
                ("enrich_last_output_acked_timestamp_seconds", "When attribute events were last acked"),
            )
        )
        self.inference_latency_s = Histogram(
            "enrich_inference_latency_seconds",
            "Wall time of one inference call (one batch)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight_batches = Gauge("enrich_in_flight_batches", "Batches inside the pipeline", registry=r)
        self.consumer_lag = Gauge(
            "enrich_consumer_lag",
            "Records between the group's committed offset and the high watermark (queried from the broker)",
            ["topic", "partition"],
            registry=r,
        )
        self._lag_series: set[tuple[str, int]] = set()
        self.paused_partitions = Gauge(
            "enrich_paused_partitions", "Assigned partitions paused (inference backend blocked)", registry=r
        )
        self.rebalances = Counter(
            "enrich_rebalances", "Rebalances that moved partitions of this worker", ["event"], registry=r
        )
        self.commit_failures = Counter(
            "enrich_commit_failures", "Offset or transaction commits that failed", ["kind"], registry=r
        )
        stale_help = "Outputs not sent: a newer listing_version was already emitted"
        self.stale_dropped = Counter("enrich_stale_dropped", stale_help, registry=r)
        about = "Listing event_time to its attribute event acknowledged by the broker"
        self.freshness_s = BatchHistogram("enrich_freshness_seconds", about, _FRESH_BUCKETS, registry=r)
        self.backend_failures = Counter(
            "enrich_backend_failures", "Failed inference calls (retried)", registry=r
        )
        self.model_info = Gauge(  # 1 for the model this worker serves; the digest is its identity
            "enrich_model_info", "The served model", ["name", "version", "digest"], registry=r
        )
        self.review = Counter(  # a listing with reasons of both kinds counts under each
            "enrich_review", "Listings copied to the review topic, by kind of reason", ["kind"], registry=r
        )
        self.model_swaps = Counter(  # outcome: done, failed (the worker keeps its model)
            "enrich_model_swaps", "Hot swaps of the served model (enrich rollout)", ["outcome"], registry=r
        )
        self.model_swap_preparing = Gauge(  # 1 from the swap's start to its model checked (or refused)
            "enrich_model_swap_preparing",
            "1 while a hot swap prepares its new model (load, backend, probe inference); else 0",
            registry=r,
        )
        self.mixed_batches = Counter(  # must stay 0: a batch holds one model's items (see between_batches)
            "enrich_mixed_batches", "Batches whose items were tokenized by different models", registry=r
        )
        self.circuit_state = Gauge(
            "enrich_circuit_state", "Inference circuit breaker: 0 closed, 1 half-open, 2 open", registry=r
        )
        # Every label value exported from the start: rate() over a series that appears at its first
        # increment misses that increment, and an alert on a series that does not exist never fires.
        for code in (v for k, v in vars(ReasonCode).items() if not k.startswith("_")):
            self.dlq.labels(code=code)
        for event in REBALANCE_EVENTS:
            self.rebalances.labels(event=event)
        for kind in COMMIT_FAILURE_KINDS:
            self.commit_failures.labels(kind=kind)
        if r is not REGISTRY:
            ProcessCollector(registry=r)
            GCCollector(registry=r)
            PlatformCollector(registry=r)

    def commit_failed(self, kind: str) -> None:
        """Suitable as the commit policy's and `commit_reporter`'s `on_failure`."""
        self.commit_failures.labels(kind=kind).inc()

    def set_lags(self, lags: dict[tuple[str, int], int]) -> None:
        """Replace the lag series by `lags`: a partition not in it (no longer assigned) loses its series."""
        self.forget_partitions(self._lag_series - lags.keys())
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        self._lag_series = set(lags)

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the lag series of partitions revoked or lost: their new owner reports them."""
        for topic, partition in list(partitions):
            if (topic, partition) in self._lag_series:
                self._lag_series.discard((topic, partition))
                self.consumer_lag.remove(topic, str(partition))

    def observe_freshness(self, event_times: Iterable[float], now: float) -> None:
        """`now - t` for each event time (UNIX seconds); a clock ahead of ours counts as 0."""
        self.freshness_s.observe_many([now - t if t < now else 0.0 for t in event_times])

    def set_circuit_state(self, state: str) -> None:
        """Suitable as ``CircuitBreaker(on_state_change=...)``."""
        self.circuit_state.set(CIRCUIT_STATE_VALUES[state])

    def export(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


@dataclass
class MetricsServer:
    """A running endpoint; ``close()`` stops it and joins its thread."""

    host: str
    port: int
    _server: ThreadingHTTPServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _make_handler(
    metrics: WorkerMetrics, is_live: Callable[[], bool], is_ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.export(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._probe(is_live)
            elif path == "/readyz":
                self._probe(is_ready)
            else:
                self._reply(404, b"not found\n")

        def _probe(self, check: Callable[[], bool]) -> None:
            try:
                ok = check()
            except Exception:
                log.exception("health check %s raised", self.path)
                ok = False
            self._reply(200 if ok else 503, b"ok\n" if ok else b"not ok\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes hit this every few seconds; access lines would drown the worker's own logs.
            return

    return Handler


def start_http_endpoint(
    metrics: WorkerMetrics,
    port: int,
    is_live: Callable[[], bool],
    is_ready: Callable[[], bool],
    *,
    host: str = "127.0.0.1",
) -> MetricsServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread. ``port=0`` picks a free port.

    The probes answer 200 when the callable returns True, else 503 (also when it raises).
    """
    server = ThreadingHTTPServer((host, port), _make_handler(metrics, is_live, is_ready))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    bound_port = server.server_address[1]
    log.info("metrics endpoint on http://%s:%d", host, bound_port)
    return MetricsServer(host=host, port=int(bound_port), _server=server, _thread=thread)
