"""Stale-update guard: the output never shows an older `listing_version` after a newer one of a listing.

Batches finish out of order, and a listing can be updated while its older version is still in flight;
the guard is asked right before an attribute event is produced. An update is admitted when its version is
>= the highest version already admitted for that listing (equal versions are re-deliveries, allowed under
at-least-once). Rejected updates are finished without output: a newer version is already downstream.

Two memories: a bounded in-process map, least recently updated forgotten first (always), and optionally
Redis, shared by all workers of the group, so a partition that moves to another worker or a restart after
a crash cannot emit an older version either. Redis failures fall back to the in-process memory, like the
cache: each update so decided is counted (`enrich_guard_local_only_total`), and the switch to local-only
and back is logged once each way (a Redis outage logs two lines, not one per batch).
After a failure Redis is left alone for `retry_after_s`, like the cache: the guard runs under the emit
lock, so a Redis slower than the client's socket timeout (chaos scenario slow-redis) cost every emit a
timeout in turn, and output fell to ~20 listings/s for the whole fault.

The atomic unit is one listing's compare-and-set: one script call checks and stores many keys, but no
decision depends on another listing's key. On a Redis Cluster, where a script may only name keys of one
hash slot, keys carry a bucket tag (see `workers.stages.cache`) and each call sends one script per bucket
present, pipelined (one round trip per node); a listing always falls in the same bucket, and its updates
keep their order inside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio.cluster import RedisCluster

from workers.stages.cache import bucket_tag, check_key_prefix

if TYPE_CHECKING:
    from workers.runtime.metrics import WorkerMetrics

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
        store: VersionStore | RedisCluster | None = None,
        namespace: str = "enrich:version",
        ttl_s: int = 30 * 24 * 3600,
        on_store_error: Callable[[BaseException], None] | None = None,
        metrics: WorkerMetrics | None = None,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._latest: dict[str, int] = {}  # insertion order = age: the oldest are forgotten first
        self._capacity = capacity
        self._cluster = store if isinstance(store, RedisCluster) else None
        plain = store is not None and self._cluster is None
        self._script = store.register_script(_ADMIT_SCRIPT) if plain else None  # type: ignore[union-attr]
        if self._cluster is not None:
            check_key_prefix(namespace)
        self._namespace = namespace
        self._ttl_s = ttl_s
        self._on_store_error = on_store_error
        self._metrics = metrics
        self._local_only = False  # the last store call failed: logged when it changes
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
        if self._script is None and self._cluster is None:
            return admitted
        candidates = [i for i, ok in enumerate(admitted) if ok]
        if not candidates:
            return admitted
        if self._clock() < self._skip_until:  # Redis failed a moment ago: leave it alone for now
            self._count_local_only(len(candidates))
            return admitted
        try:
            if self._cluster is not None:
                shared = await self._admit_on_cluster(self._cluster, [updates[i] for i in candidates])
            else:
                shared = await self._admit_shared([updates[i] for i in candidates])
        except (OSError, ConnectionError, TimeoutError) as exc:
            self._store_failed(exc, len(candidates))
            return admitted
        except Exception as exc:  # redis.exceptions.RedisError (RedisClusterException is not one)
            if type(exc).__module__.split(".")[0] != "redis":
                raise
            self._store_failed(exc, len(candidates))
            return admitted
        if self._local_only:
            self._local_only = False
            log.warning("version store answers again: guarding through it")
        for i, ok in zip(candidates, shared, strict=True):
            if not ok:
                admitted[i] = False
        return admitted

    async def _admit_shared(self, updates: list[tuple[str, int]]) -> list[int]:
        assert self._script is not None
        keys = [f"{self._namespace}:{listing_id}" for listing_id, _ in updates]
        return list(await self._script(keys=keys, args=[self._ttl_s, *(v for _, v in updates)]))

    async def _admit_on_cluster(self, cluster: RedisCluster, updates: list[tuple[str, int]]) -> list[int]:
        """One EVAL per bucket (one hash slot), pipelined; the flags come back in the order of `updates`.

        EVAL, not EVALSHA: a node that never saw the script (new, or promoted after a failover) cannot
        answer NOSCRIPT to a pipelined call, and the ~0.5 KB of script text per bucket costs less than the
        client's own per-command work (~23 µs).
        """
        buckets: dict[str, list[int]] = {}
        for position, (listing_id, _) in enumerate(updates):
            buckets.setdefault(bucket_tag(listing_id), []).append(position)
        async with cluster.pipeline(transaction=False) as pipe:
            for tag, positions in buckets.items():
                keys = [f"{self._namespace}:{tag}:{updates[p][0]}" for p in positions]
                versions = [updates[p][1] for p in positions]
                pipe.execute_command("EVAL", _ADMIT_SCRIPT, len(keys), *keys, self._ttl_s, *versions)
            replies = await pipe.execute()
        shared = [0] * len(updates)
        for positions, reply in zip(buckets.values(), replies, strict=True):
            for position, ok in zip(positions, reply, strict=True):
                shared[position] = ok
        return shared

    def _count_local_only(self, n_updates: int) -> None:
        if self._metrics is not None:
            self._metrics.guard_local_only.inc(n_updates)

    def _store_failed(self, exc: BaseException, n_updates: int) -> None:
        self._skip_until = self._clock() + self._retry_after_s
        self._count_local_only(n_updates)
        if not self._local_only:
            self._local_only = True
            log.warning(
                "version store failed: guarding with this worker's memory only until it answers again "
                "(counted in enrich_guard_local_only_total): %r",
                exc,
            )
        if self._on_store_error is not None:
            self._on_store_error(exc)
