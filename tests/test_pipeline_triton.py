"""The worker on Triton (gRPC): results, then Triton down -> partitions paused, nothing dropped -> resumed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from tests.test_pipeline import counter, finished, make_config
from workers.runtime.assembly import build_worker, wait_for_backend

pytestmark = pytest.mark.services


def test_triton_outage_pauses_and_loses_nothing(
    kafka, tiny_model_dir: Path, tiny_triton_repo: Path, triton_factory, new_topic: Callable[..., str]
) -> None:
    triton = triton_factory(tiny_triton_repo)
    topics = (new_topic(partitions=2, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    bootstrap = kafka.bootstrap_servers
    config = make_config(
        bootstrap, tiny_model_dir, topics, "g-triton",
        ENRICH_BACKEND="triton", ENRICH_TRITON_URL=triton.grpc_url,
        ENRICH_INFER_TIMEOUT_S="2", ENRICH_BREAKER_FAILURES="1", ENRICH_BREAKER_RESET_S="0.5",
        ENRICH_BACKOFF_INITIAL_S="0.1", ENRICH_BACKOFF_MAX_S="0.5",
    )  # fmt: skip
    worker = build_worker(config)
    observed: dict[str, bool] = {}

    async def scenario() -> None:
        await wait_for_backend(worker, config, timeout_s=30)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90

        async def wait_for(condition: Callable[[], bool]) -> bool:
            while not condition() and loop.time() < deadline and not task.done():
                await asyncio.sleep(0.05)
            return condition()

        await asyncio.to_thread(produce_records, bootstrap, topics[0], sample_listings(20, id_prefix="A"))
        observed["first"] = await wait_for(lambda: finished(worker) >= 20)

        await asyncio.to_thread(triton.stop)
        await asyncio.to_thread(
            produce_records, bootstrap, topics[0], sample_listings(20, id_prefix="B", seed=3)
        )
        observed["paused"] = await wait_for(lambda: worker.paused)
        observed["not_ready"] = not worker.is_ready()
        observed["held_back"] = finished(worker) < 40

        await asyncio.to_thread(triton.start)
        observed["all"] = await wait_for(lambda: finished(worker) >= 40)
        observed["resumed"] = await wait_for(lambda: not worker.paused)
        stop.set()
        await task

    asyncio.run(scenario())
    assert observed == {k: True for k in ("first", "paused", "not_ready", "held_back", "all", "resumed")}
    assert counter(worker, "enrich_backend_failures") >= 1
    events = read_events(bootstrap, topics[1], expected=40, timeout_s=15)
    expected = {f"A-{i:06d}" for i in range(20)} | {f"B-{i:06d}" for i in range(20)}
    assert {e["listing_id"] for e in events} == expected
