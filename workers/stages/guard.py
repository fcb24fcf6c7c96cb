"""Stale-update guard: the output never shows an older `listing_version` after a newer one of a listing.

Batches finish out of order, and a listing can be updated while its older version is still in flight;
the guard is asked right before an attribute event is produced. An update is admitted when its version is
>= the highest version already admitted for that listing (equal versions are re-deliveries, allowed under
at-least-once). Rejected updates are finished without output: a newer version is already downstream.

Two memories: a bounded in-process map, least recently updated forgotten first (always), and optionally
Redis, shared by all workers of the group, so a partition that moves to another worker or a restart after
a crash cannot emit an older version either. Redis failures fall back to the in-process memory (counted
and logged), like the cache; and like the cache, after a failure Redis is left alone for `retry_after_s`:
the guard runs under the emit lock, so a Redis slower than the client's socket timeout (chaos scenario
slow-redis) cost every emit a timeout in turn, and output fell to ~20 listings/s for the whole fault.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from itertools import islice
from typing import Any, Protocol

__all__ = ["StaleUpdateGuard"]

log = logging.getLogger(__name__)

# In order, per update: admit when no version is stored or the stored one is <= ARGV[i]; then store it.
_ADMIT_SCRIPT = """
local ttl = tonumber(ARGV[1])
local result = {}
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[i + 1])
  local stored = redis.call('GET', key)
  if stored and tonumber(stored) > version then
    result[i] = 0
  else
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
    result[i] = 1
  end
end
return result
"""


class AdmitScript(Protocol):
    async def __call__(self, keys: list[str], args: list[Any]) -> Any: ...


class VersionStore(Protocol):
    """The part of `redis.asyncio.Redis` the guard uses (EVALSHA, loading the script when Redis lacks it)."""

    def register_script(self, script: str) -> AdmitScript: ...


class StaleUpdateGuard:
    """Admits (listing_id, version) updates in order; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        capacity: int = 200_000,
        store: VersionStore | None = None,
        namespace: str = "enrich:version",
        ttl_s: int = 30 * 24 * 3600,
        on_store_error: Callable[[BaseException], None] | None = None,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._latest: dict[str, int] = {}  # insertion order = age: the oldest are forgotten first
        self._capacity = capacity
        self._script = store.register_script(_ADMIT_SCRIPT) if store is not None else None
        self._namespace = namespace
        self._ttl_s = ttl_s
        self._on_store_error = on_store_error
        self._retry_after_s, self._clock, self._skip_until = retry_after_s, clock, 0.0

    def _admit_locally(self, updates: list[tuple[str, int]]) -> list[bool]:
        latest, admitted = self._latest, []
        for listing_id, version in updates:
            stored = latest.get(listing_id)
            if stored is None:
                latest[listing_id] = version
            elif stored > version:
                admitted.append(False)
                continue
            else:
                del latest[listing_id]  # re-inserted as the youngest
                latest[listing_id] = version
            admitted.append(True)
        excess = len(latest) - self._capacity
        if excess > 0:
            for listing_id in list(islice(latest, excess)):
                del latest[listing_id]
        return admitted

    async def admit(self, updates: list[tuple[str, int]]) -> list[bool]:
        """One flag per update, in order (a later update in the same call sees the earlier ones)."""
        admitted = self._admit_locally(updates)
        if self._script is None:
            return admitted
        candidates = [i for i, ok in enumerate(admitted) if ok]
        if not candidates or self._clock() < self._skip_until:
            return admitted
        prefix = self._namespace + ":"
        keys = [prefix + updates[i][0] for i in candidates]
        versions = [updates[i][1] for i in candidates]
        try:
            shared = await self._script(keys=keys, args=[self._ttl_s, *versions])
        except (OSError, ConnectionError, TimeoutError) as exc:
            self._store_failed(exc)
            return admitted
        except Exception as exc:  # redis.exceptions.RedisError without importing redis here
            if type(exc).__module__.split(".")[0] != "redis":
                raise
            self._store_failed(exc)
            return admitted
        for i, ok in zip(candidates, shared, strict=True):
            if not ok:
                admitted[i] = False
        return admitted

    def _store_failed(self, exc: BaseException) -> None:
        self._skip_until = self._clock() + self._retry_after_s
        log.warning("version store unavailable, guarding with this worker's memory only: %r", exc)
        if self._on_store_error is not None:
            self._on_store_error(exc)
