"""Stale-update guard: the output never shows an older `listing_version` after a newer one of a listing.

Batches finish out of order, and a listing can be updated while its older version is still in flight;
the guard is asked right before an attribute event is produced.

The ordering rule, in one place (`_admit_locally` and `_ADMIT_SCRIPT` implement the same comparison): an
update is the pair (listing_version, model rank), and it is admitted when that pair is >= the highest
pair already admitted for the listing, compared listing_version first. So
- an older listing_version is always refused, whatever model produced it;
- the same listing_version from a newer model (higher `ServedModel.rank`: a replay with the active model)
  is admitted and replaces the older model's result downstream;
- the same listing_version from the same model is admitted: a re-delivery under at-least-once. The pair
  is stored before the broker acknowledged the event, so refusing it could lose the only copy after a
  crash between the two;
- the same listing_version from an older model is refused: a newer model's result is already downstream.
Refused updates are finished without output.

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
keep their order inside it. Redis holds "version:rank" (a bare "version", written before ranks
existed, reads as rank 0).

`wait_for_store` (replay): a replay re-emits old listing versions, so a decision from this process's
memory alone would let them overtake what the live workers emitted; it waits for Redis instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio.cluster import RedisCluster

from workers.stages.cache import bucket_tag, check_key_prefix

if TYPE_CHECKING:
    from workers.runtime.metrics import WorkerMetrics

__all__ = ["StaleUpdateGuard", "update_order"]

log = logging.getLogger(__name__)

_RANK_BITS = 64  # a rank (a model's creation time in ms, see ServedModel.rank) fits with room to spare


def update_order(version: int, model_rank: int) -> int:
    """The rule's order of (listing_version, model rank) as one int, listing_version first: the in-process
    map keeps one int per listing (a tuple would cost ~56 bytes more each, at 200,000 listings)."""
    if not 0 <= model_rank < 1 << _RANK_BITS:
        raise ValueError(f"model rank must be in [0, 2**{_RANK_BITS}), got {model_rank}")
    return (version << _RANK_BITS) | model_rank


# In order, per update: admit when nothing is stored or the stored (version, rank) is <= (ARGV[i+2], ARGV[2]);
# then store it. ARGV[1] is the TTL, ARGV[2] the model rank (one model per call).
_ADMIT_SCRIPT = """
local ttl = tonumber(ARGV[1])
local rank = tonumber(ARGV[2])
local result = {}
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[i + 2])
  local stored = redis.call('GET', key)
  local newer = false
  if stored then
    local colon = string.find(stored, ':', 1, true)
    local stored_version, stored_rank = tonumber(stored), 0
    if colon then
      stored_version = tonumber(string.sub(stored, 1, colon - 1))
      stored_rank = tonumber(string.sub(stored, colon + 1))
    end
    newer = stored_version > version or (stored_version == version and stored_rank > rank)
  end
  if newer then
    result[i] = 0
  else
    redis.call('SET', key, ARGV[i + 2] .. ':' .. ARGV[2], 'EX', ttl)
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
        wait_for_store: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._latest: dict[str, int] = {}  # update_order(); insertion order = age: oldest forgotten first
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
        self._wait_for_store = wait_for_store and (store is not None)

    def _admit_locally(self, updates: list[tuple[str, int]], model_rank: int) -> list[bool]:
        latest, admitted = self._latest, []
        for listing_id, version in updates:
            order = update_order(version, model_rank)
            stored = latest.get(listing_id)
            if stored is None:
                latest[listing_id] = order
            elif stored > order:
                admitted.append(False)
                continue
            else:
                del latest[listing_id]  # re-inserted as the youngest
                latest[listing_id] = order
            admitted.append(True)
        excess = len(latest) - self._capacity
        if excess > 0:
            for listing_id in list(islice(latest, excess)):
                del latest[listing_id]
        return admitted

    async def admit(self, updates: list[tuple[str, int]], model_rank: int = 0) -> list[bool]:
        """One flag per (listing_id, listing_version) update of a result from the model of `model_rank`,
        in order (a later update in the same call sees the earlier ones)."""
        admitted = self._admit_locally(updates, model_rank)
        if self._script is None and self._cluster is None:
            return admitted
        candidates = [i for i, ok in enumerate(admitted) if ok]
        if not candidates:
            return admitted
        if self._clock() < self._skip_until:  # Redis failed a moment ago: leave it alone for now
            self._count_local_only(len(candidates))
            return admitted
        while True:
            try:
                shared = await self._admit_in_store([updates[i] for i in candidates], model_rank)
                break
            except Exception as exc:
                if not _is_store_failure(exc):
                    raise
                if not self._wait_for_store:
                    self._store_failed(exc, len(candidates))
                    return admitted
                if self._on_store_error is not None:
                    self._on_store_error(exc)
                if not self._local_only:
                    self._local_only = True
                    log.warning("version store failed: waiting for it (replay never guards alone): %r", exc)
                await asyncio.sleep(self._retry_after_s)
        if self._local_only:
            self._local_only = False
            log.warning("version store answers again: guarding through it")
        for i, ok in zip(candidates, shared, strict=True):
            if not ok:
                admitted[i] = False
        return admitted

    async def _admit_in_store(self, updates: list[tuple[str, int]], model_rank: int) -> list[int]:
        if self._cluster is not None:
            return await self._admit_on_cluster(self._cluster, updates, model_rank)
        assert self._script is not None
        keys = [f"{self._namespace}:{listing_id}" for listing_id, _ in updates]
        return list(await self._script(keys=keys, args=[self._ttl_s, model_rank, *(v for _, v in updates)]))

    async def _admit_on_cluster(
        self, cluster: RedisCluster, updates: list[tuple[str, int]], model_rank: int
    ) -> list[int]:
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
                args = (self._ttl_s, model_rank, *versions)
                pipe.execute_command("EVAL", _ADMIT_SCRIPT, len(keys), *keys, *args)
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


def _is_store_failure(exc: BaseException) -> bool:
    """A connection failure or a redis.exceptions.RedisError (RedisClusterException is not one)."""
    return (
        isinstance(exc, (OSError, ConnectionError, TimeoutError))
        or type(exc).__module__.split(".")[0] == "redis"
    )
