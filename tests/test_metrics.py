"""The metrics endpoint over real HTTP, the JSON log format, and the worker's metrics on real Kafka runs
(lag after a rebalance and while paused, freshness, model info, process collectors)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from tests.test_pipeline import _closed_port, counter, make_config, run_until
from workers.model.served import ServedModel
from workers.runtime.assembly import build_worker
from workers.runtime.logs import configure_json_logging
from workers.runtime.metrics import MetricsServer, WorkerMetrics, start_http_endpoint
from workers.runtime.resilience import CircuitBreaker
from workers.runtime.worker import StreamWorker


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
    metrics.model_info.labels(name="m", version="v1", digest="sha256:ab").set(1)
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
        'enrich_model_info{digest="sha256:ab",name="m",version="v1"} 1.0',
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


# ---- the worker's own metrics on a real Kafka run ------------------------------------------------------


def _lags(metrics: WorkerMetrics) -> dict[int, float]:
    """The worker's enrich_consumer_lag series by partition."""
    return {int(s.labels["partition"]): s.value for m in metrics.registry.collect()
            if m.name == "enrich_consumer_lag" for s in m.samples}  # fmt: skip


def _sample(metrics: WorkerMetrics, metric: str, /, **labels: str) -> float:
    return metrics.registry.get_sample_value(metric, labels) or 0.0


async def _until(condition: Callable[[], bool], timeout_s: float = 60) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return condition()


@pytest.mark.services
def test_lag_series_leave_with_revoked_partitions(
    kafka, tiny_model_dir: Path, new_topic: Callable[..., str]
) -> None:
    topics = (new_topic(partitions=2, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    produce_records(kafka.bootstrap_servers, topics[0], sample_listings(8, id_prefix="R"))
    config = make_config(kafka.bootstrap_servers, tiny_model_dir, topics, "g-lag-revoke")
    first, second = (build_worker(dataclasses.replace(config, worker_id=f"lag-{i}")) for i in (1, 2))
    seen: dict[str, object] = {}

    def reports_its_own(worker: StreamWorker) -> bool:
        return bool(worker.assigned) and set(_lags(worker.metrics)) == {p for _, p in worker.assigned}

    async def scenario() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(first.run(stop))]
        seen["alone"] = await _until(lambda: set(_lags(first.metrics)) == {0, 1})
        tasks.append(asyncio.create_task(second.run(stop)))
        seen["shared"] = await _until(lambda: reports_its_own(first) and reports_its_own(second))
        seen["first"], seen["second"] = dict(_lags(first.metrics)), dict(_lags(second.metrics))
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert seen["alone"] and seen["shared"], seen
    assert set(seen["first"]).isdisjoint(seen["second"]), seen  # type: ignore[arg-type]
    assert _sample(first.metrics, "enrich_rebalances_total", event="revoked") >= 1
    assert _sample(second.metrics, "enrich_rebalances_total", event="assigned") >= 1
    assert _lags(first.metrics) == {} and _lags(second.metrics) == {}, "left the group: no series left"


@pytest.mark.services
def test_lag_counts_from_the_committed_offset_while_paused(
    kafka, tiny_model_dir: Path, new_topic: Callable[..., str]
) -> None:
    """10 records done and committed; 6 consumed by a worker whose backend is unreachable (it pauses);
    9 more produced while paused. The lag is 15: not the 9 behind its position, nor a watermark cached
    before the pause."""
    bootstrap = kafka.bootstrap_servers
    topics = (new_topic(partitions=2, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    produce_records(bootstrap, topics[0], sample_listings(10, id_prefix="A"))
    done = build_worker(make_config(bootstrap, tiny_model_dir, topics, "g-lag-paused"))
    asyncio.run(run_until([done], lambda: counter(done, "enrich_events_out") >= 10))
    assert counter(done, "enrich_events_out") == 10

    blocked = build_worker(make_config(
        bootstrap, tiny_model_dir, topics, "g-lag-paused", ENRICH_BACKEND="triton",
        ENRICH_TRITON_URL=f"127.0.0.1:{_closed_port()}", ENRICH_BREAKER_FAILURES="1",
        ENRICH_DRAIN_TIMEOUT_S="1",
    ))  # fmt: skip
    metrics = blocked.metrics
    seen: dict[str, object] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(blocked.run(stop))
        await asyncio.to_thread(produce_records, bootstrap, topics[0], sample_listings(6, id_prefix="B"))
        seen["paused"] = await _until(lambda: _sample(metrics, "enrich_paused_partitions") == 2)
        await asyncio.to_thread(produce_records, bootstrap, topics[0], sample_listings(9, id_prefix="C"))
        seen["lag"] = await _until(lambda: sum(_lags(metrics).values()) == 15)
        seen["lags"], seen["in"] = _lags(metrics), counter(blocked, "enrich_events_in")
        seen["still paused"] = _sample(metrics, "enrich_paused_partitions")
        stop.set()
        await task

    asyncio.run(scenario())
    assert seen["paused"] and seen["lag"], seen
    assert seen["in"] == 6 and seen["still paused"] == 2, seen
    assert _sample(metrics, "enrich_circuit_state") == 2


@pytest.mark.services
def test_a_real_run_exports_freshness_model_and_process_metrics(
    kafka, tiny_model_dir: Path, new_topic: Callable[..., str]
) -> None:
    topics = (new_topic(prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    produce_records(kafka.bootstrap_servers, topics[0], sample_listings(20, id_prefix="F"))
    worker = build_worker(make_config(kafka.bootstrap_servers, tiny_model_dir, topics, "g-fresh"))
    asyncio.run(run_until([worker], lambda: counter(worker, "enrich_events_out") >= 20))
    metrics = worker.metrics
    # sample_listings stamps event_time at production: every output is seconds fresh at most.
    assert _sample(metrics, "enrich_freshness_seconds_count") == 20
    assert 0 < _sample(metrics, "enrich_freshness_seconds_sum") < 20 * 60
    assert _sample(metrics, "enrich_freshness_seconds_bucket", le="+Inf") == 20
    info = json.loads((tiny_model_dir / "model_info.json").read_text())
    digest = ServedModel.load(tiny_model_dir).digest
    model = {"name": info["name"], "version": info["version"], "digest": digest}
    assert _sample(metrics, "enrich_model_info", **model) == 1
    assert _sample(metrics, "process_resident_memory_bytes") > 0
    assert _sample(metrics, "python_gc_collections_total", generation="0") >= 0
    assert metrics.registry.get_sample_value("python_info", {**_python_info_labels()}) == 1
    assert _sample(metrics, "enrich_commit_failures_total", kind="offsets") == 0
    assert _sample(metrics, "enrich_rebalances_total", event="assigned") == 1


def _python_info_labels() -> dict[str, str]:
    import platform

    major, minor, patchlevel = platform.python_version_tuple()
    return {"implementation": platform.python_implementation(), "major": major, "minor": minor,
            "patchlevel": patchlevel, "version": platform.python_version()}  # fmt: skip


@pytest.mark.services
def test_intake_goes_on_while_a_lag_measurement_waits_for_the_broker(
    kafka, tiny_model_dir: Path, new_topic: Callable[..., str]
) -> None:
    """The lag is measured in the background: while the probe waits, listings keep flowing. (Measured
    on the worker's own consumer, a lag query waited behind that consumer's long-polling fetch, 0.5 s
    per partition, and the intake loop waited for it.)"""
    from workers.stages.lag import LagProbe

    class HeldProbe(LagProbe):
        def __init__(self) -> None:
            super().__init__(worker._kafka, "held-probe")
            self.asked, self.release = asyncio.Event(), asyncio.Event()

        async def lag(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
            self.asked.set()
            await self.release.wait()
            return {tp: 0 for tp in partitions}

    bootstrap = kafka.bootstrap_servers
    topics = (new_topic(partitions=2, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    worker = build_worker(make_config(bootstrap, tiny_model_dir, topics, "g-lag-held"))
    probe = worker._lag_probe = HeldProbe()
    seen: dict[str, object] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        seen["asked"] = await _until(probe.asked.is_set)
        await asyncio.to_thread(produce_records, bootstrap, topics[0], sample_listings(20, id_prefix="H"))
        seen["flowed"] = await _until(lambda: counter(worker, "enrich_events_out") >= 20)
        seen["held"], seen["lags"] = not probe.release.is_set(), _lags(worker.metrics)
        probe.release.set()
        seen["reported"] = await _until(lambda: set(_lags(worker.metrics)) == {0, 1})
        stop.set()
        await task

    asyncio.run(scenario())
    assert seen["asked"] and seen["flowed"] and seen["held"], seen
    assert seen["lags"] == {} and seen["reported"], seen
