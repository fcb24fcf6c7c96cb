"""Shortened network-fault scenarios (issue 15) through the chaos proxy: nothing lost, the worker copes
with a slow or silent peer by itself and recovers without a restart. Full size: `enrich chaos slow-redis`,
`slow-triton`, `partition` (devtools/reliability/network_scenarios.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.reliability.run import Services
from devtools.reliability.scenarios import run_scenario
from tests.test_chaos import QUICK, assert_nothing_lost, explain, services  # noqa: F401 (a fixture)

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
    assert_nothing_lost(result)  # includes: the worker never died (no restart)
    assert result.tally.duplicates <= result.in_flight_window, explain(result)
    assert len(result.recovery_s) == 1, explain(result)

