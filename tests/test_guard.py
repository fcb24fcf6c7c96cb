"""Stale-update guard: never an older listing_version after a newer one of the same listing."""

from __future__ import annotations

import asyncio

import pytest

from workers.stages.guard import StaleUpdateGuard


def admit(guard: StaleUpdateGuard, updates: list[tuple[str, int]]) -> list[bool]:
    return asyncio.run(guard.admit(updates))


def test_older_versions_are_refused_equal_ones_admitted() -> None:
    guard = StaleUpdateGuard()
    assert admit(guard, [("a", 2), ("b", 1)]) == [True, True]
    assert admit(guard, [("a", 1), ("a", 2), ("a", 3), ("b", 0)]) == [False, True, True, False]
    assert admit(guard, [("a", 3), ("a", 2)]) == [True, False]


def test_lru_capacity_bounds_memory() -> None:
    guard = StaleUpdateGuard(capacity=2)
    admit(guard, [("a", 5), ("b", 5), ("c", 5)])
    assert admit(guard, [("a", 1)]) == [True]  # evicted: without a shared store it is forgotten
    assert admit(guard, [("c", 1)]) == [False]


class BrokenStore:
    def register_script(self, script: str) -> object:
        async def run(keys: list[str], args: list[object]) -> object:
            raise ConnectionError("redis down")

        return run


def test_store_failure_falls_back_to_local_memory() -> None:
    errors: list[BaseException] = []
    guard = StaleUpdateGuard(store=BrokenStore(), on_store_error=errors.append)
    assert admit(guard, [("a", 2), ("a", 1)]) == [True, False]
    assert len(errors) == 1


@pytest.mark.services
def test_versions_are_shared_between_workers_through_redis(redis_server) -> None:
    from redis.asyncio import Redis

    async def scenario() -> tuple[list[bool], list[bool]]:
        client = Redis.from_url(redis_server.url)
        try:
            first = StaleUpdateGuard(store=client, namespace="test-guard")
            second = StaleUpdateGuard(store=client, namespace="test-guard")  # another worker / a restart
            await first.admit([("x", 5), ("y", 1)])
            return await second.admit([("x", 4), ("x", 5), ("y", 2)]), await first.admit([("y", 1)])
        finally:
            await client.aclose()

    seen_by_second, seen_by_first = asyncio.run(scenario())
    assert seen_by_second == [False, True, True]
    assert seen_by_first == [False]
