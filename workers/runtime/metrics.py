"""Prometheus metrics of one worker, and the HTTP endpoint serving /metrics, /healthz and /readyz.

Every metric lives on the worker's own ``CollectorRegistry`` (not the global default one), so several
workers in one process — as in the tests — never collide.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "CIRCUIT_STATE_VALUES",
    "MetricsServer",
    "WorkerMetrics",
    "start_http_endpoint",
]

log = logging.getLogger(__name__)

CIRCUIT_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}

_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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
        self.inference_latency_s = Histogram(
            "enrich_inference_latency_seconds",
            "Wall time of one inference call (one batch)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight_batches = Gauge("enrich_in_flight_batches", "Batches inside the pipeline", registry=r)
        self.consumer_lag = Gauge(
            "enrich_consumer_lag", "Messages behind the high watermark", ["topic", "partition"], registry=r
        )
        self.backend_failures = Counter(
            "enrich_backend_failures", "Failed inference calls (retried)", registry=r
        )
        self.model_info = Gauge(  # 1 for the model this worker serves; the digest is its identity
            "enrich_model_info", "The served model", ["name", "version", "digest"], registry=r
        )
        self.model_swaps = Counter(  # outcome: done, failed (the worker keeps its model)
            "enrich_model_swaps", "Hot swaps of the served model (enrich rollout)", ["outcome"], registry=r
        )
        self.mixed_batches = Counter(  # must stay 0: a batch holds one model's items (see switch_serving)
            "enrich_mixed_batches", "Batches whose items were tokenized by different models", registry=r
        )
        self.circuit_state = Gauge(
            "enrich_circuit_state", "Inference circuit breaker: 0 closed, 1 half-open, 2 open", registry=r
        )

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
