"""Result cache in Redis: one MGET per consumed chunk, one pipeline of SET … EX for the new results.

Key = model version + hash of the exact title (the only field the model reads), so a hit's character
offsets fit the listing that finds it and the hit path needs neither the tokenizer nor the decoder.

The cache is an optimisation only. Any Redis failure turns into cache misses (reads) or a skipped write,
is counted in ``cache_errors`` and logged, and the batch goes on uncached — the pipeline never sees a Redis
exception. After a failure Redis is left alone for ``retry_after_s`` so that an outage costs each batch
nothing instead of a socket timeout; then the next call tries again and the client reconnects by itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import hiredis
from redis.asyncio import Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import DataError, RedisError
from redis.utils import HIREDIS_AVAILABLE

from workers.contract.results import ListingResult

if TYPE_CHECKING:
    from workers.runtime.config import CacheConfig
    from workers.runtime.metrics import WorkerMetrics

__all__ = ["CPackedConnection", "ResultCache", "make_redis_client", "make_result_cache", "unique_keys"]

log = logging.getLogger(__name__)

# Bumped when the cached value's layout changes, so old entries are never read as new ones.
_VALUE_FORMAT = "r2"


def unique_keys(keys: Sequence[str]) -> tuple[list[str], list[int]]:
    """Deduplicate keys keeping first-seen order: ``unique[index_map[i]] == keys[i]`` for every i."""
    position: dict[str, int] = {}
    index_map: list[int] = []
    for key in keys:
        index_map.append(position.setdefault(key, len(position)))
    return list(position), index_map


class CPackedConnection(Connection):
    """redis-py's asyncio connection packs commands in Python (~2 µs per argument: most of the cost of
    an MGET of a 500-record chunk); its sync client packs with hiredis' C `pack_command`. Same bytes."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " in name:  # "SCRIPT LOAD": the server wants two arguments
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


def make_redis_client(
    url: str,
    *,
    socket_timeout_s: float = 0.25,
    connect_timeout_s: float = 0.25,
) -> Redis:
    """A client suited to the cache: short timeouts and one immediate retry.

    The single retry lets a pooled connection that died with a Redis restart be replaced transparently;
    more retries would only stretch the stall when Redis is really gone.
    """
    options: dict[str, Any] = {}
    if HIREDIS_AVAILABLE and url.startswith("redis://"):
        options["connection_class"] = CPackedConnection
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=10,
        **options,
    )


class ResultCache:
    """Cached inference results keyed by model version and the hash of the exact title.

    ``client=None`` disables the cache: every lookup misses (not counted), writes are no-ops.
    """

    def __init__(
        self,
        client: Redis | None,
        model_version: str,
        ttl_s: int,
        metrics: WorkerMetrics | None = None,
        *,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0 seconds, got {ttl_s}")
        if not model_version or ":" in model_version:
            raise ValueError(f"model_version must be a non-empty string without ':', got {model_version!r}")
        self._client = client
        self._prefix = f"enrich:{model_version}:{_VALUE_FORMAT}:"
        self._ttl_s = ttl_s
        self._metrics = metrics
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._skip_until = 0.0

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def key_for(self, text: str) -> str:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16)
        return self._prefix + digest.hexdigest()

    async def lookup(self, titles: list[str]) -> list[ListingResult | None]:
        """The cached result per title (None: miss), with one MGET for the distinct titles."""
        if self._client is None:
            return [None] * len(titles)
        unique, index_map = unique_keys(titles)
        values = await self.get_many([self.key_for(title) for title in unique])
        found = [
            ListingResult.from_bytes(value, title) if value is not None else None
            for title, value in zip(unique, values, strict=True)
        ]
        return [found[i] for i in index_map]

    async def store(self, entries: list[tuple[str, ListingResult]]) -> None:
        """Cache `(title, result)` pairs (see `put_many`)."""
        if self._client is not None and entries:
            unique = {title: result for title, result in entries}
            await self.put_many([(self.key_for(t), r.to_bytes(t)) for t, r in unique.items()])

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Values for ``keys`` in order (None = miss) with one MGET; on any Redis failure all None."""
        if not keys or self._client is None:
            return [None] * len(keys)
        if self._in_cooldown():
            self._count_error()
            return [None] * len(keys)
        try:
            values: list[bytes | None] = await self._client.mget(keys)
        except (RedisError, OSError) as exc:
            self._failed("MGET", len(keys), exc)
            return [None] * len(keys)
        hits = sum(value is not None for value in values)
        if self._metrics is not None:
            self._metrics.cache_hits.inc(hits)
            self._metrics.cache_misses.inc(len(values) - hits)
        return values

    async def put_many(self, entries: list[tuple[str, bytes]]) -> None:
        """Store ``(key, value)`` pairs with the TTL in one pipeline; failures are counted, never raised."""
        if not entries or self._client is None:
            return
        if self._in_cooldown():
            self._count_error()
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in entries:
                    pipe.set(key, value, ex=self._ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("SET pipeline", len(entries), exc)

    async def close(self) -> None:
        """Close the Redis client (its connection pool); the cache is disabled afterwards."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _in_cooldown(self) -> bool:
        return self._clock() < self._skip_until

    def _failed(self, operation: str, n_keys: int, exc: BaseException) -> None:
        self._skip_until = self._clock() + self._retry_after_s
        self._count_error()
        log.warning(
            "redis %s failed, continuing without cache for %.1fs: %r",
            operation,
            self._retry_after_s,
            exc,
            extra={"cache_operation": operation, "keys": n_keys},
        )

    def _count_error(self) -> None:
        if self._metrics is not None:
            self._metrics.cache_errors.inc()


def make_result_cache(
    config: CacheConfig, model_version: str, metrics: WorkerMetrics | None = None
) -> ResultCache:
    """The cache ``config`` describes; an empty ``redis_url`` gives a disabled cache (always misses)."""
    client = make_redis_client(config.redis_url) if config.redis_url else None
    return ResultCache(client, model_version, config.ttl_s, metrics)
