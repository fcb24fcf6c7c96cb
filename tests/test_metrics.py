"""The metrics endpoint over real HTTP, and the JSON log format."""

from __future__ import annotations

import io
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest

from workers.runtime.logs import configure_json_logging
from workers.runtime.metrics import MetricsServer, WorkerMetrics, start_http_endpoint
from workers.runtime.resilience import CircuitBreaker


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def endpoint() -> Iterator[tuple[WorkerMetrics, MetricsServer, dict[str, bool]]]:
    metrics = WorkerMetrics()
    health = {"live": True, "ready": False}
    server = start_http_endpoint(metrics, 0, lambda: health["live"], lambda: health["ready"])
    yield metrics, server, health
    server.close()


def test_metrics_endpoint_serves_every_metric(endpoint: tuple[WorkerMetrics, MetricsServer, dict]) -> None:
    metrics, server, _ = endpoint
    metrics.events_in.inc(3)
    metrics.events_out.inc(2)
    metrics.dlq.labels(code="schema_invalid").inc()
    metrics.cache_hits.inc(5)
    metrics.cache_misses.inc(1)
    metrics.cache_errors.inc()
    metrics.batch_size.observe(32)
    metrics.inference_latency_s.observe(0.02)
    metrics.in_flight_batches.set(2)
    metrics.consumer_lag.labels(topic="listings.new", partition="0").set(17)
    metrics.backend_failures.inc()
    metrics.batch_shapes.labels(rows="32", seq="16").inc()
    metrics.first_consumed_at.set(1_700_000_000.5)
    metrics.last_output_at.set(1_700_000_002.0)
    CircuitBreaker(1, 60.0, on_state_change=metrics.set_circuit_state).record_failure()

    status, body = _get(server.url + "/metrics")
    assert status == 200
    for line in (
        "enrich_events_in_total 3.0",
        "enrich_events_out_total 2.0",
        'enrich_dlq_total{code="schema_invalid"} 1.0',
        "enrich_cache_hits_total 5.0",
        "enrich_cache_misses_total 1.0",
        "enrich_cache_errors_total 1.0",
        "enrich_batch_size_count 1.0",
        "enrich_inference_latency_seconds_count 1.0",
        "enrich_in_flight_batches 2.0",
        'enrich_consumer_lag{partition="0",topic="listings.new"} 17.0',
        "enrich_backend_failures_total 1.0",
        "enrich_circuit_state 2.0",
        'enrich_inference_batches_total{rows="32",seq="16"} 1.0',
        "enrich_first_consumed_timestamp_seconds 1.7000000005e+09",
        "enrich_last_output_acked_timestamp_seconds 1.700000002e+09",
    ):
        assert line in body.splitlines(), line


def test_health_endpoints_follow_the_callables(endpoint: tuple[WorkerMetrics, MetricsServer, dict]) -> None:
    _, server, health = endpoint
    assert _get(server.url + "/healthz")[0] == 200
    assert _get(server.url + "/readyz")[0] == 503
    health["ready"] = True
    health["live"] = False
    assert _get(server.url + "/readyz")[0] == 200
    assert _get(server.url + "/healthz")[0] == 503
    assert _get(server.url + "/nothing-here")[0] == 404


def test_a_raising_probe_reports_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("probe bug")

    server = start_http_endpoint(WorkerMetrics(), 0, broken, broken)
    try:
        assert _get(server.url + "/readyz")[0] == 503
    finally:
        server.close()


def test_two_workers_in_one_process_have_separate_registries() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.events_in.inc()
    assert b"enrich_events_in_total 1.0" in first.export()
    assert b"enrich_events_in_total 0.0" in second.export()


def test_json_logging_writes_one_object_per_line_with_extras() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_json_logging("INFO", stream=stream, static_fields={"worker_id": "w-1"})
        log = logging.getLogger("workers.test")
        log.debug("hidden")
        log.info("batch done in %d ms", 12, extra={"partition": 3, "offset": 41})
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)

    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["msg"] == "batch done in 12 ms"
    assert (first["level"], first["logger"], first["worker_id"]) == ("INFO", "workers.test", "w-1")
    assert (first["partition"], first["offset"]) == (3, 41)
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: bad" in second["exc"]
