"""Result cache: key derivation, and MGET / pipelined SET against a real redis-server and a real 3-master
Redis Cluster (keys of one call in many hash slots), outages included; one worker pass on the cluster."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from workers.contract.errors import ConfigError
from workers.contract.results import ListingResult
from workers.model.decode import Attribute
from workers.runtime.config import CacheConfig
from workers.runtime.metrics import WorkerMetrics
from workers.stages.cache import ResultCache, make_redis_client, make_result_cache, unique_keys
from workers.stages.guard import StaleUpdateGuard


def _counts(metrics: WorkerMetrics) -> tuple[float, float, float]:
    return tuple(  # type: ignore[return-value]
        metrics.registry.get_sample_value(f"enrich_cache_{name}_total")
        for name in ("hits", "misses", "errors")
    )


def digest(name: str) -> str:
    """A model digest for a test model called `name`."""
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_key_is_the_exact_title() -> None:
    cache = ResultCache(None, digest("v1"), ttl_s=60)
    # Offsets are cached with the result, so any difference in the characters is another key.
    assert cache.key_for("Lavazza Dark Roast") == cache.key_for("Lavazza Dark Roast")
    assert cache.key_for("Lavazza Dark Roast") != cache.key_for("LAVAZZA DARK ROAST")
    assert cache.key_for("a b") != cache.key_for("a  b")
    model_part = digest("v1")[7:39]
    assert re.fullmatch(rf"enrich:{model_part}:r2:[0-9a-f]{{32}}", cache.key_for("x"))


def test_the_model_digest_is_part_of_the_key_and_a_version_string_is_refused() -> None:
    first, second = ResultCache(None, digest("a"), 60), ResultCache(None, digest("b"), 60)
    assert first.key_for("mug") != second.key_for("mug")
    with pytest.raises(ValueError, match="not a model digest"):
        ResultCache(None, "v1", 60)


def test_unique_keys_maps_every_position_back() -> None:
    keys = ["a", "b", "a", "c", "b"]
    unique, index_map = unique_keys(keys)
    assert unique == ["a", "b", "c"]
    assert [unique[i] for i in index_map] == keys
    assert unique_keys([]) == ([], [])


def test_disabled_cache_misses_without_counting() -> None:
    metrics = WorkerMetrics()
    cache = ResultCache(None, digest("v1"), 60, metrics)
    assert asyncio.run(cache.get_many(["k1", "k2"])) == [None, None]
    asyncio.run(cache.put_many([("k1", b"x")]))
    assert _counts(metrics) == (0, 0, 0)


class _DownClient:
    """Stands in for a Redis client whose server is gone; counts how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    async def mget(self, keys: list[str]) -> Any:
        self.calls += 1
        raise RedisConnectionError("connection refused")


def test_after_a_failure_redis_is_left_alone_for_retry_after_s() -> None:
    now = [0.0]
    client = _DownClient()
    metrics = WorkerMetrics()
    cache = ResultCache(client, digest("v1"), 60, metrics, retry_after_s=5.0, clock=lambda: now[0])  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await cache.get_many(["k"]) == [None]
        now[0] = 4.0
        assert await cache.get_many(["k"]) == [None]
        assert client.calls == 1, "skipped during the cool-down"
        now[0] = 5.0
        assert await cache.get_many(["k"]) == [None]
        assert client.calls == 2, "tried again after it"

    asyncio.run(scenario())
    assert _counts(metrics) == (0, 0, 3)


def test_unreachable_redis_gives_misses_and_counts_errors() -> None:
    metrics = WorkerMetrics()

    async def scenario() -> None:
        client = make_redis_client(f"redis://127.0.0.1:{_free_port()}/0")
        cache = ResultCache(client, digest("v1"), 60, metrics, retry_after_s=0.0)
        try:
            assert await cache.get_many(["a", "b"]) == [None, None]
            await cache.put_many([("a", b"1")])
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert _counts(metrics) == (0, 0, 2)


@pytest.mark.services
def test_round_trip_with_ttl(any_redis: tuple[str, bool]) -> None:
    metrics = WorkerMetrics()

    async def scenario() -> None:
        client = make_redis_client(any_redis[0], cluster=any_redis[1])
        cache = ResultCache(client, digest("roundtrip"), 120, metrics)
        keys = [cache.key_for(t) for t in ("red mug", "blue mug", "green mug")]
        try:
            await cache.put_many([(keys[0], b'{"a":1}'), (keys[1], b'{"b":2}')])
            assert await cache.get_many(keys) == [b'{"a":1}', b'{"b":2}', None]
            assert 0 < await client.ttl(keys[0]) <= 120
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert _counts(metrics) == (2, 1, 0)


@pytest.mark.services
def test_lookup_finds_results_by_exact_title_one_key_per_distinct_title(any_redis: tuple[str, bool]) -> None:
    metrics = WorkerMetrics()
    result = ListingResult.from_decoded("Coffee", 0.9, [Attribute("Brand", "Lavazza", 0.8, 0, 7)])

    async def scenario() -> list[ListingResult | None]:
        client = make_redis_client(any_redis[0], cluster=any_redis[1])
        cache = ResultCache(client, digest("lookup"), 120, metrics)
        try:
            await cache.store([("Lavazza Crema", result), ("Lavazza Crema", result)])
            await client.set(cache.key_for("Lavazza Oro"), b"garbage")
            return await cache.lookup(["Lavazza Crema", "LAVAZZA CREMA", "Lavazza Crema", "Lavazza Oro"])
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [result, None, result, None]
    assert _counts(metrics)[:2] == (2, 1), "three distinct titles looked up, the duplicate once"


@pytest.mark.services
def test_redis_outage_degrades_to_misses_and_recovers(redis_server: Any) -> None:
    metrics = WorkerMetrics()

    async def scenario() -> None:
        client = make_redis_client(redis_server.url)
        cache = ResultCache(client, digest("outage"), 120, metrics, retry_after_s=0.0)
        key = cache.key_for("espresso beans 1kg")
        try:
            await cache.put_many([(key, b"cached")])
            assert await cache.get_many([key]) == [b"cached"]

            redis_server.stop()
            try:
                assert await cache.get_many([key]) == [None]
                await cache.put_many([(key, b"lost")])  # must not raise
                assert _counts(metrics)[2] == 2
            finally:
                redis_server.start()

            # The pooled connection died with the old server; the cache reconnects by itself.
            await cache.put_many([(key, b"again")])
            assert await cache.get_many([key]) == [b"again"]
        finally:
            await client.aclose()

    asyncio.run(scenario())
    hits, misses, errors = _counts(metrics)
    assert (hits, misses, errors) == (2, 0, 2), "a failed lookup is an error, not a miss"


@pytest.mark.services
def test_make_result_cache_follows_the_config(any_redis: tuple[str, bool]) -> None:
    async def scenario() -> None:
        assert not make_result_cache(CacheConfig(redis_url=""), digest("v1")).enabled
        config = CacheConfig(redis_url=any_redis[0], redis_cluster=any_redis[1], ttl_s=30)
        cache = make_result_cache(config, digest("v1"))
        assert cache.enabled
        try:
            await cache.put_many([("enrich:v1:factory", b"ok")])
            assert await cache.get_many(["enrich:v1:factory"]) == [b"ok"]
        finally:
            await cache.close()
        assert not cache.enabled

    asyncio.run(scenario())


def test_the_c_packer_writes_the_same_bytes_as_redis_py() -> None:
    from redis.asyncio import Connection

    from workers.stages.cache import CPackedConnection

    for args in (
        ("MGET", "enrich:v1:r2:00ff", b"k\xff2"),
        ("SET", "k", b"v\r\n", "EX", 60),
        ("EVALSHA", "ab", 2, 1.5),
    ):
        assert b"".join(CPackedConnection().pack_command(*args)) == b"".join(Connection().pack_command(*args))


@pytest.mark.services
def test_a_redis_of_the_other_mode_is_refused_at_start(redis_server: Any, redis_cluster: Any) -> None:
    with pytest.raises(ConfigError, match="ENRICH_REDIS_CLUSTER=true"):
        make_redis_client(redis_cluster.url)
    with pytest.raises(ConfigError, match="not in cluster mode"):
        make_redis_client(redis_server.url, cluster=True)


@pytest.mark.services
def test_on_a_cluster_one_lookup_reads_every_node_in_bucketed_keys(redis_cluster: Any) -> None:
    metrics = WorkerMetrics()
    titles = [f"title {i}" for i in range(300)]
    result = ListingResult.from_decoded("Coffee", 0.9, [])

    async def scenario() -> list[ListingResult | None]:
        config = CacheConfig(redis_url=redis_cluster.url, redis_cluster=True)
        cache = make_result_cache(config, digest("spread"), metrics)
        try:
            await cache.store([(title, result) for title in titles])
            return await cache.lookup([*titles, "never stored"])
        finally:
            await cache.close()

    assert asyncio.run(scenario()) == [result] * 300 + [None]
    assert _counts(metrics) == (300, 1, 0)
    per_node = []
    for node in redis_cluster.nodes:
        client = node.client()
        model_part = digest("spread")[7:39]
        keys = [k.decode() for k in client.scan_iter(match=f"enrich:{model_part}:*", count=1000)]
        client.close()
        pattern = rf"enrich:{model_part}:r2:\{{\d+\.\d+\}}:[0-9a-f]{{32}}"
        assert all(re.fullmatch(pattern, k) for k in keys), keys[:3]
        per_node.append(len(keys))
    assert sum(per_node) == 300 and min(per_node) > 0, per_node


@pytest.mark.services
def test_a_cluster_node_down_gives_misses_and_local_guarding_then_both_recover(redis_cluster: Any) -> None:
    metrics = WorkerMetrics()
    result = ListingResult.from_decoded("Coffee", 0.9, [])
    titles = [f"outage {i}" for i in range(50)]  # over all three nodes

    async def scenario() -> None:
        client = make_redis_client(redis_cluster.url, cluster=True)
        cache = ResultCache(client, digest("node-down"), 120, metrics, retry_after_s=0.0)
        guard = StaleUpdateGuard(store=client, namespace="test-node-down", metrics=metrics)
        try:
            await cache.store([(title, result) for title in titles])
            assert await guard.admit([("n", 2)]) == [True]
            redis_cluster.nodes[1].stop()
            try:
                assert await cache.lookup(titles) == [None] * 50  # must not raise
                others = [(f"m{i}", 1) for i in range(30)]  # some of them on the stopped node
                assert await guard.admit([("n", 1), *others]) == [False] + [True] * 30  # its own memory
                assert metrics.registry.get_sample_value("enrich_guard_local_only_total") == 30
            finally:
                redis_cluster.nodes[1].start()
                redis_cluster.wait_ready()
            # The client finds the node again by itself (which came back empty: no persistence here), and
            # the guard goes back to the shared store.
            await cache.store([(title, result) for title in titles])
            assert await cache.lookup(titles) == [result] * 50
            assert await guard.admit([(f"p{i}", 2) for i in range(30)]) == [True] * 30
            second = StaleUpdateGuard(store=client, namespace="test-node-down", metrics=metrics)
            assert await second.admit([(f"p{i}", 1) for i in range(30)]) == [False] * 30
        finally:
            await client.aclose()

    asyncio.run(scenario())
    hits, misses, errors = _counts(metrics)
    assert (hits, misses) == (50, 0) and errors >= 1
    assert metrics.registry.get_sample_value("enrich_guard_local_only_total") == 30
