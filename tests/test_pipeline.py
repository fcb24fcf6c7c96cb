"""The stream worker end to end on a real Kafka broker, redis-server and the tiny exported model."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import fastjsonschema
import orjson
import pytest

from devtools.harness.listings import invalid_samples, sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from workers.contract.errors import ReasonCode
from workers.contract.events import load_schema
from workers.model.decode import ModelLabels
from workers.model.normalise import normalize
from workers.runtime.assembly import build_worker
from workers.runtime.config import WorkerConfig, load_config
from workers.runtime.worker import StreamWorker

pytestmark = pytest.mark.services


def make_config(
    bootstrap: str, model_dir: Path, topics: tuple[str, str, str], group: str, **extra: str
) -> WorkerConfig:
    env = {
        "ENRICH_KAFKA_BOOTSTRAP": bootstrap, "ENRICH_MODEL_DIR": str(model_dir), "ENRICH_GROUP_ID": group,
        "ENRICH_INPUT_TOPIC": topics[0], "ENRICH_OUTPUT_TOPIC": topics[1], "ENRICH_DLQ_TOPIC": topics[2],
        "ENRICH_METRICS_PORT": "-1", "ENRICH_COMMIT_INTERVAL_MS": "100", "ENRICH_SESSION_TIMEOUT_MS": "6000",
        "ENRICH_MAX_BATCH": "16", "ENRICH_MAX_WAIT_MS": "10", **extra,
    }  # fmt: skip
    return load_config(None, env=env)


def counter(worker: StreamWorker, name: str) -> float:
    return sum(
        s.value for m in worker.metrics.registry.collect() for s in m.samples if s.name == f"{name}_total"
    )


def finished(worker: StreamWorker) -> float:
    return (
        counter(worker, "enrich_events_out")
        + counter(worker, "enrich_dlq")
        + counter(worker, "enrich_stale_dropped")
    )


async def run_until(workers: list[StreamWorker], done: Callable[[], bool], timeout_s: float = 60) -> None:
    """Run the workers until `done()` (or the timeout), then stop them cleanly (drain + commit)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done() and loop.time() < deadline and not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)


@pytest.fixture
def topics(new_topic: Callable[..., str]) -> tuple[str, str, str]:
    return new_topic(partitions=3, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq")


def test_each_listing_yields_one_event_dlq_gets_reasons_and_second_pass_is_cached(
    kafka, redis_server, tiny_model_dir: Path, topics: tuple[str, str, str]
) -> None:
    bootstrap = kafka.bootstrap_servers
    listings = sample_listings(40, id_prefix="P")
    invalid = invalid_samples()
    produce_records(bootstrap, topics[0], [*invalid[:2], *listings[:20], *invalid[2:], *listings[20:]])
    config = make_config(bootstrap, tiny_model_dir, topics, "g-main", ENRICH_REDIS_URL=redis_server.url)

    first = build_worker(config)
    asyncio.run(run_until([first], lambda: finished(first) >= 45))
    events = read_events(bootstrap, topics[1], expected=40, timeout_s=15)
    dead = read_events(bootstrap, topics[2], expected=5, timeout_s=15)

    assert Counter(e["listing_id"] for e in events) == Counter(f"P-{i:06d}" for i in range(40))
    titles = {key.decode(): orjson.loads(value)["title"] for key, value in listings}
    labels = ModelLabels.from_file(tiny_model_dir / "labels.json")
    output_schema = fastjsonschema.compile(load_schema("listing-attributes"))
    for event in events:
        assert event["listing_version"] == 1 and event["category"]["label"] in labels.categories
        assert 0 <= event["category"]["confidence"] <= 1
        title = titles[event["listing_id"]]
        for attribute in event["attributes"]:
            assert attribute["value"] == title[attribute["start"] : attribute["end"]]
            assert attribute["name"] in labels.attributes_by_category[event["category"]["label"]]
            assert attribute["normalized"] == normalize(attribute["value"]).to_json()
        output_schema(event)
    assert sum(bool(e["attributes"]) for e in events) >= 30  # the tiny model does find attributes
    assert sorted(e["error"]["code"] for e in dead) == sorted([
        ReasonCode.INVALID_JSON, ReasonCode.INVALID_UTF8, ReasonCode.SCHEMA_VIOLATION,
        ReasonCode.UNSUPPORTED_SCHEMA_VERSION, ReasonCode.MISSING_KEY,
    ])  # fmt: skip
    assert all(e["payload"] is not None for e in dead)

    # Restart with the same group: resumes after the committed offsets, and the same titles hit the cache.
    produce_records(bootstrap, topics[0], sample_listings(40, id_prefix="P", version=2))
    second = build_worker(config)
    asyncio.run(run_until([second], lambda: finished(second) >= 40))
    assert counter(second, "enrich_events_in") == 40  # nothing of the first pass read again
    later = [
        e for e in read_events(bootstrap, topics[1], expected=80, timeout_s=15) if e["listing_version"] == 2
    ]
    assert len(later) == 40 and all(e["cache_hit"] for e in later)
    by_id = {e["listing_id"]: e for e in events}
    for event in later:
        assert event["attributes"] == by_id[event["listing_id"]]["attributes"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_down_runs_uncached_and_stale_versions_are_not_emitted(
    kafka, tiny_model_dir: Path, topics: tuple[str, str, str]
) -> None:
    bootstrap = kafka.bootstrap_servers
    newer = sample_listings(10, id_prefix="S", version=3)
    older = sample_listings(10, id_prefix="S", version=2)
    produce_records(bootstrap, topics[0], [*newer, *older])
    config = make_config(
        bootstrap,
        tiny_model_dir,
        topics,
        "g-redis-down",
        ENRICH_MAX_BATCH="64",
        ENRICH_MAX_WAIT_MS="1000",
        ENRICH_REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0",
    )
    worker = build_worker(config)
    asyncio.run(run_until([worker], lambda: finished(worker) >= 20))
    events = read_events(bootstrap, topics[1], expected=20, timeout_s=5)
    versions: dict[str, list[int]] = {}
    for event in events:  # read in partition order, which is the order downstream sees
        versions.setdefault(event["listing_id"], []).append(event["listing_version"])
    assert sorted(versions) == [f"S-{i:06d}" for i in range(10)]
    assert all(seen == sorted(seen) and seen[-1] == 3 for seen in versions.values()), versions
    emitted_older = sum(seen.count(2) for seen in versions.values())
    assert counter(worker, "enrich_stale_dropped") + emitted_older == 10
    assert not any(e["cache_hit"] for e in events)
    assert counter(worker, "enrich_cache_errors") >= 1


def test_two_workers_in_one_group_split_the_partitions_with_a_clean_rebalance(
    kafka, redis_server, tiny_model_dir: Path, new_topic: Callable[..., str]
) -> None:
    topics = (new_topic(partitions=4, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    bootstrap = kafka.bootstrap_servers
    # A long time window keeps the first wave waiting in worker 1's batches while worker 2 joins, so the
    # rebalance has unfinished work to drain and commit before the partitions move.
    config = make_config(
        bootstrap, tiny_model_dir, topics, "g-pair", ENRICH_REDIS_URL=redis_server.url,
        ENRICH_MAX_BATCH="256", ENRICH_MAX_WAIT_MS="1500",
    )  # fmt: skip
    workers = [build_worker(dataclasses.replace(config, worker_id=f"pair-{i}")) for i in (1, 2)]

    async def scenario() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60

        async def wait_for(condition: Callable[[], bool]) -> bool:
            while not condition() and loop.time() < deadline:
                await asyncio.sleep(0.02)
            return condition()

        tasks = [asyncio.create_task(workers[0].run(stop))]
        assert await wait_for(lambda: len(workers[0].assigned) == 4)
        await asyncio.to_thread(produce_records, bootstrap, topics[0], sample_listings(30, id_prefix="T"))
        assert await wait_for(lambda: counter(workers[0], "enrich_events_in") >= 1)
        tasks.append(asyncio.create_task(workers[1].run(stop)))
        assert await wait_for(lambda: all(w.assigned for w in workers)), "both workers should own partitions"
        await asyncio.to_thread(
            produce_records, bootstrap, topics[0], sample_listings(60, id_prefix="U", seed=5)
        )
        await wait_for(lambda: sum(finished(w) for w in workers) >= 90)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert all(counter(w, "enrich_events_out") > 0 for w in workers)
    events = read_events(bootstrap, topics[1], expected=90, timeout_s=10)
    expected = Counter([f"T-{i:06d}" for i in range(30)] + [f"U-{i:06d}" for i in range(60)])
    assert Counter(e["listing_id"] for e in events) == expected  # all, and none twice: the drain committed
    assert {e["worker_id"] for e in events} == {"pair-1", "pair-2"}


def test_worker_serves_metrics_liveness_and_readiness(
    kafka, tiny_model_dir: Path, topics: tuple[str, str, str]
) -> None:
    import urllib.request

    from workers.runtime.assembly import run_worker
    from workers.runtime.metrics import WorkerMetrics

    bootstrap = kafka.bootstrap_servers
    produce_records(bootstrap, topics[0], [*sample_listings(12, id_prefix="M"), *invalid_samples()[:1]])
    port = _closed_port()
    config = make_config(bootstrap, tiny_model_dir, topics, "g-metrics", ENRICH_METRICS_PORT=str(port),
                         ENRICH_METRICS_HOST="127.0.0.1")  # fmt: skip
    metrics = WorkerMetrics()
    pages: dict[str, tuple[int, str]] = {}

    def get(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()

    def value(name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    def dlq_total() -> float:
        return metrics.registry.get_sample_value("enrich_dlq_total", {"code": "invalid_json"}) or 0.0

    def lag_reported() -> bool:  # the commit tick sets the lag gauges once partitions are assigned
        return any(s.name == "enrich_consumer_lag" for m in metrics.registry.collect() for s in m.samples)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(config, stop, metrics=metrics))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline and not (
            value("enrich_events_out_total") + dlq_total() >= 13 and lag_reported()
        ):
            await asyncio.sleep(0.05)
        for path in ("/metrics", "/healthz", "/readyz"):
            pages[path] = await asyncio.to_thread(get, path)
        stop.set()
        await task

    asyncio.run(scenario())
    assert pages["/healthz"][0] == 200 and pages["/readyz"][0] == 200
    status, text = pages["/metrics"]
    assert status == 200
    for line in ("enrich_events_in_total 13.0", "enrich_events_out_total 12.0",
                 'enrich_dlq_total{code="invalid_json"} 1.0', "enrich_batch_size_count",
                 "enrich_inference_latency_seconds_count", "enrich_consumer_lag{"):  # fmt: skip
        assert line in text, line
