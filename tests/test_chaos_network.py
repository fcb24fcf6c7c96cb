"""Shortened network-fault scenarios (issue 15) through the chaos proxy: nothing lost, the worker copes
with a slow or silent peer by itself and recovers without a restart. Full size: `enrich chaos slow-redis`,
`slow-triton`, `partition` (devtools/reliability/network_scenarios.py)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from devtools.reliability.network_scenarios import REDIS_LATENCY_S
from devtools.reliability.proxy import TcpProxy
from devtools.reliability.run import Services
from devtools.reliability.scenarios import run_scenario
from devtools.services.redis_server import RedisServer
from tests.test_chaos import QUICK, assert_nothing_lost, explain, services  # noqa: F401 (a fixture)
from workers.stages.cache import make_redis_client
from workers.stages.guard import StaleUpdateGuard

pytestmark = pytest.mark.services


def test_slow_redis_costs_the_cache_only_and_the_cache_comes_back(services: Services) -> None:  # noqa: F811
    result = run_scenario("slow-redis", services, QUICK)
    details = result.details
    assert_nothing_lost(result)
    assert result.tally.duplicates == 0, explain(result)  # no crash, no rebalance: nothing re-read
    # The fault reached the worker: its Redis calls timed out, were counted, and it went on uncached.
    assert details.get("redis_failures_during", 0) > 0, explain(result)
    assert details.get("cache_errors_during", 0) > 0, explain(result)
    assert details.get("events_out_during", 0) > 0, explain(result)
    assert details.get("cache_hits_after", 0) > 0, explain(result)  # the cache serves again
    assert len(result.recovery_s) == 1, explain(result)


def test_slow_triton_opens_the_breaker_pauses_and_resumes_by_itself(
    services: Services,  # noqa: F811
    triton_factory,
    tiny_triton_repo: Path,
) -> None:
    services.triton = triton_factory(tiny_triton_repo)
    result = run_scenario("slow-triton", services, QUICK)
    details = result.details
    assert_nothing_lost(result)
    assert result.tally.duplicates == 0, explain(result)
    assert details.get("breaker_opened_during", 0) >= 1, explain(result)
    assert details.get("paused_during", 0) >= 1, explain(result)
    assert details.get("breaker_closed_after", 0) >= 1, explain(result)
    assert details["ended_paused"] == 0 and details.get("circuit_last") == 0, explain(result)
    assert len(result.recovery_s) == 1, explain(result)


def test_partition_from_the_broker_loses_nothing_and_the_worker_recovers_without_restart(
    services: Services,  # noqa: F811
) -> None:
    result = run_scenario("partition", services, QUICK)
    details = result.details
    assert_nothing_lost(result)  # includes: the worker never died (no restart)
    # The fault outlasted the session timeout: the assignment was lost, and given back after it healed.
    assert details.get("lost_during", 0) + details.get("revoked_during", 0) >= 1, explain(result)
    assert "rejoined_s" in details, explain(result)
    assert result.tally.duplicates <= result.duplicate_bound, explain(result)
    assert len(result.recovery_s) == 1, explain(result)


# ---- what the scenarios found, pinned --------------------------------------------------------------------


def test_guard_leaves_a_slow_redis_alone_for_a_while_after_a_timeout(redis_server: RedisServer) -> None:
    """slow-redis found it: the stale-update guard asked Redis on every emit, under the emit lock, so a
    Redis slower than the client's timeout cost each emit a timeout in turn (output ~20 listings/s)."""
    now = [0.0]
    namespace = f"test-slow-guard-{uuid.uuid4().hex[:8]}"
    errors: list[BaseException] = []

    async def scenario(proxy: TcpProxy) -> None:
        client = make_redis_client(f"redis://{proxy.address}/0")  # the worker's client and timeouts
        guard = StaleUpdateGuard(store=client, namespace=namespace, on_store_error=errors.append,
                                 retry_after_s=1.0, clock=lambda: now[0])  # fmt: skip
        try:
            assert await guard.admit([("a", 1)]) == [True]
            proxy.add_latency(REDIS_LATENCY_S)
            assert await guard.admit([("a", 2)]) == [True]  # timed out: this worker's memory decides
            assert len(errors) == 1
            assert await guard.admit([("a", 3), ("a", 1)]) == [True, False]  # Redis left alone meanwhile
            assert len(errors) == 1
            proxy.pass_through()
            now[0] += 1.0
            assert await guard.admit([("b", 7)]) == [True]  # asked again
        finally:
            await client.aclose()

    with TcpProxy(redis_server.port) as proxy:
        asyncio.run(scenario(proxy))
    assert len(errors) == 1
    assert redis_server.client().get(f"{namespace}:b") == b"7:0"  # listing_version:model rank
