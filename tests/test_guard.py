"""Stale-update guard: never an older listing_version after a newer one of the same listing.

The admit rules are checked on the process-local memory alone and through a shared version store, on one
redis-server and on a 3-master Redis Cluster (where the keys of one call span many hash slots).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from tests.service_fixtures import redis_target
from tests.test_pipeline import counter, finished, make_config, run_until
from workers.contract.errors import ConfigError
from workers.model.served import model_rank
from workers.runtime.assembly import build_worker
from workers.runtime.metrics import WorkerMetrics
from workers.stages.cache import make_redis_client
from workers.stages.guard import StaleUpdateGuard, update_order

T = TypeVar("T")


def admit(guard: StaleUpdateGuard, updates: list[tuple[str, int]]) -> list[bool]:
    return asyncio.run(guard.admit(updates))


def with_store(store: tuple[str, bool] | None, scenario: Callable[[Any], Awaitable[T]]) -> T:
    """Run `scenario(client)` in one event loop: a client for `store` = (url, cluster), or None."""

    async def run() -> T:
        if store is None:
            return await scenario(None)
        client = make_redis_client(store[0], cluster=store[1], socket_timeout_s=5, connect_timeout_s=5)
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


@pytest.fixture(
    params=["memory", *(pytest.param(kind, marks=pytest.mark.services) for kind in ("single", "cluster"))]
)
def version_store(request: pytest.FixtureRequest) -> tuple[str, bool] | None:
    """None (process-local memory only), then (url, cluster) of the session redis-server, and cluster."""
    return None if request.param == "memory" else redis_target(request, request.param)


def test_older_versions_are_refused_equal_ones_admitted(version_store: tuple[str, bool] | None) -> None:
    async def scenario(client: Any) -> list[list[bool]]:
        guard = StaleUpdateGuard(store=client, namespace=f"test-rules-{uuid.uuid4().hex[:8]}")
        calls = [[("a", 2), ("b", 1)], [("a", 1), ("a", 2), ("a", 3), ("b", 0)], [("a", 3), ("a", 2)]]
        return [await guard.admit(updates) for updates in calls]

    assert with_store(version_store, scenario) == [[True, True], [False, True, True, False], [True, False]]


def test_the_ordering_rule_listing_version_first_then_model_rank(
    version_store: tuple[str, bool] | None,
) -> None:
    """The rule replay relies on, the same in memory, on one Redis and on a cluster."""
    old_model, new_model = 1_700_000_000_000, 1_800_000_000_000

    async def scenario(client: Any) -> list[list[bool]]:
        namespace = f"test-rank-{uuid.uuid4().hex[:8]}"
        guard = StaleUpdateGuard(store=client, namespace=namespace)
        calls = [
            ([("a", 2), ("b", 2)], old_model),
            ([("a", 2)], new_model),  # same listing_version, newer model: replaces the old result
            ([("a", 2)], new_model),  # same version, same model: a re-delivery, admitted
            ([("a", 2), ("b", 1)], old_model),  # same version, older model; an older version: refused
            ([("a", 1)], new_model + 1),  # an older listing_version never overtakes, whatever the model
            ([("a", 3)], old_model),  # a newer listing_version wins from any model
            ([("a", 3), ("b", 3)], 0),  # an unranked model is the oldest
        ]
        # With a store, a fresh guard (empty memory) per call: every decision is the store's.
        fresh = (lambda: StaleUpdateGuard(store=client, namespace=namespace)) if client else (lambda: guard)
        return [await fresh().admit(updates, rank) for updates, rank in calls]

    assert with_store(version_store, scenario) == [
        [True, True], [True], [True], [False, False], [False], [True], [False, True],
    ]  # fmt: skip


def test_update_order_is_listing_version_then_rank_in_one_int() -> None:
    pairs = [(1, 0), (1, 5), (1, 2**64 - 1), (2, 0), (2, 3), (10**15, 1)]
    assert sorted(pairs, key=lambda p: update_order(*p)) == sorted(pairs)
    with pytest.raises(ValueError, match="model rank"):
        update_order(1, -1)


def test_model_rank_is_the_creation_time_in_milliseconds() -> None:
    assert model_rank({"created_at": "2025-01-02T03:04:05+00:00"}) == 1_735_787_045_000
    assert model_rank({"created_at": "2025-01-02T03:04:05"}) == 1_735_787_045_000  # naive: UTC
    assert model_rank({}) == 0
    with pytest.raises(ConfigError, match="created_at"):
        model_rank({"created_at": "yesterday"})


@pytest.mark.services
def test_a_version_stored_before_ranks_reads_as_rank_zero(redis_server: Any) -> None:
    namespace = f"test-legacy-{uuid.uuid4().hex[:8]}"
    redis_server.client().set(f"{namespace}:old", "5")

    async def scenario(client: Any) -> list[list[bool]]:
        guard = StaleUpdateGuard(store=client, namespace=namespace)
        return [await guard.admit([("old", 4)], 9), await guard.admit([("old", 5)], 1)]

    assert with_store((redis_server.url, False), scenario) == [[False], [True]]
    assert redis_server.client().get(f"{namespace}:old") == b"5:1"


def test_lru_capacity_bounds_memory() -> None:
    guard = StaleUpdateGuard(capacity=2)
    admit(guard, [("a", 5), ("b", 5), ("c", 5)])
    assert admit(guard, [("a", 1)]) == [True]  # evicted: without a shared store it is forgotten
    assert admit(guard, [("c", 1)]) == [False]


class FlakyStore:
    """A version store that raises ConnectionError while `down` (or for its first `down_calls` calls),
    else answers `answer` (1: admit) for every key."""

    def __init__(self, down_calls: int | None = None, answer: int = 1) -> None:
        self.down = down_calls is None
        self.down_calls, self.answer = down_calls, answer
        self.calls = 0

    def register_script(self, script: str) -> object:
        async def run(keys: list[str], args: list[object]) -> object:
            self.calls += 1
            if self.down or (self.down_calls is not None and self.calls <= self.down_calls):
                raise ConnectionError("redis down")
            return [self.answer] * len(keys)

        return run


def test_store_failure_falls_back_to_local_memory_counted_and_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[BaseException] = []
    metrics = WorkerMetrics()
    store = FlakyStore()
    now = [0.0]
    guard = StaleUpdateGuard(
        store=store, on_store_error=errors.append, metrics=metrics, retry_after_s=1.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="workers.stages.guard"):
        assert admit(guard, [("a", 2), ("a", 1)]) == [True, False]
        now[0] = 0.5  # within retry_after_s of the failure: Redis is left alone, memory decides
        assert admit(guard, [("b", 1), ("c", 1)]) == [True, True]
        assert store.calls == 1
        store.down = False
        now[0] = 1.5
        assert admit(guard, [("a", 3)]) == [True]
        assert admit(guard, [("a", 4)]) == [True]
    assert store.calls == 3
    assert len(errors) == 1
    assert metrics.registry.get_sample_value("enrich_guard_local_only_total") == 3  # a@2, b, c
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "version store failed",
        "version store answers again",
    ]


def test_waiting_for_the_store_never_decides_alone(caplog: pytest.LogCaptureFixture) -> None:
    """Replay's guard: a failed store is asked again until it answers; memory alone never admits."""
    store = FlakyStore(down_calls=3, answer=0)
    errors: list[BaseException] = []
    metrics = WorkerMetrics()
    guard = StaleUpdateGuard(
        store=store, on_store_error=errors.append, metrics=metrics, retry_after_s=0.001, wait_for_store=True
    )
    with caplog.at_level(logging.WARNING, logger="workers.stages.guard"):
        assert admit(guard, [("a", 2)]) == [False]  # the store's answer, after it came back
    assert store.calls == 4 and len(errors) == 3
    assert metrics.registry.get_sample_value("enrich_guard_local_only_total") == 0
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "version store failed",
        "version store answers again",
    ]


@pytest.mark.services
def test_versions_are_shared_between_workers_through_redis(any_redis: tuple[str, bool]) -> None:
    async def scenario(client: Any) -> tuple[list[bool], list[bool]]:
        namespace = f"test-guard-{uuid.uuid4().hex[:8]}"
        first = StaleUpdateGuard(store=client, namespace=namespace)
        second = StaleUpdateGuard(store=client, namespace=namespace)  # another worker / a restart
        await first.admit([("x", 5), ("y", 1)])
        return await second.admit([("x", 4), ("x", 5), ("y", 2)]), await first.admit([("y", 1)])

    seen_by_second, seen_by_first = with_store(any_redis, scenario)
    assert seen_by_second == [False, True, True]
    assert seen_by_first == [False]


@pytest.mark.services
def test_on_a_cluster_one_call_spreads_over_every_node_in_bucketed_keys(redis_cluster: Any) -> None:
    namespace = f"test-spread-{uuid.uuid4().hex[:8]}"
    updates = [(f"L-{i:06d}", 7) for i in range(300)]
    metrics = WorkerMetrics()

    async def scenario(client: Any) -> tuple[list[bool], list[bool]]:
        first = StaleUpdateGuard(store=client, namespace=namespace, metrics=metrics)
        second = StaleUpdateGuard(store=client, namespace=namespace, metrics=metrics)
        return await first.admit(updates), await second.admit([(i, v - 1) for i, v in updates])

    admitted, older = with_store((redis_cluster.url, True), scenario)
    assert all(admitted) and not any(older), "the second guard's memory is empty: the cluster refused them"
    assert metrics.registry.get_sample_value("enrich_guard_local_only_total") == 0
    per_node = []
    for node in redis_cluster.nodes:
        client = redis.Redis(host=node.host, port=node.port)
        keys = [k.decode() for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
        client.close()
        assert all(re.fullmatch(rf"{namespace}:\{{\d+\.\d+\}}:L-\d{{6}}", k) for k in keys), keys[:3]
        per_node.append(len(keys))
    assert sum(per_node) == 300 and min(per_node) > 0, per_node


@pytest.mark.services
def test_a_worker_on_the_cluster_refuses_versions_another_worker_already_emitted(
    kafka: Any, redis_cluster: Any, tiny_model_dir: Path, new_topic: Callable[..., str]
) -> None:
    """Two worker passes, one group, one cluster: the second worker's memory is empty, so what it refuses
    it learned from the cluster; what it emits comes from the cluster's result cache."""
    topics = (new_topic(partitions=3, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    bootstrap = kafka.bootstrap_servers
    config = make_config(
        bootstrap, tiny_model_dir, topics, "g-cluster", ENRICH_REDIS_URL=redis_cluster.url,
        ENRICH_REDIS_CLUSTER="true",
    )  # fmt: skip
    produce_records(bootstrap, topics[0], sample_listings(20, id_prefix="C", version=2))
    first = build_worker(config)
    asyncio.run(run_until([first], lambda: finished(first) >= 20))
    assert counter(first, "enrich_events_out") == 20

    produce_records(bootstrap, topics[0], [*sample_listings(20, id_prefix="C", version=1),
                                           *sample_listings(20, id_prefix="C", version=3)])  # fmt: skip
    second = build_worker(config)
    asyncio.run(run_until([second], lambda: finished(second) >= 40))
    assert counter(second, "enrich_stale_dropped") == 20
    newest = [e for e in read_events(bootstrap, topics[1], expected=40, timeout_s=15)
              if e["listing_version"] == 3]  # fmt: skip
    assert len(newest) == 20 and all(e["cache_hit"] for e in newest)
    for worker in (first, second):
        assert counter(worker, "enrich_guard_local_only") == 0
        assert counter(worker, "enrich_cache_errors") == 0
