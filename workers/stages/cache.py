"""Result cache in Redis: one MGET per consumed chunk, one pipeline of SET … EX for the new results.

Key = model digest + hash of the exact title (the only field the model reads), so a hit's character
offsets fit the listing that finds it and the hit path needs neither the tokenizer nor the decoder. The
digest, not the version string: two models both called `v1` on one Redis would otherwise serve each
other's results for the whole TTL (see `workers.model.identity`).

The cache is an optimisation only. Any Redis failure turns into cache misses (reads) or a skipped write,
is counted in ``cache_errors`` and logged, and the batch goes on uncached — the pipeline never sees a Redis
exception. After a failure Redis is left alone for ``retry_after_s`` so that an outage costs each batch
nothing instead of a socket timeout; then the next call tries again and the client reconnects by itself.

Redis Cluster (``ENRICH_REDIS_CLUSTER``): an MGET, and a script, may only name keys of one hash slot
(else CROSSSLOT). Keys therefore carry one of ``CLUSTER_BUCKETS`` hash tags, and each call sends one
command per bucket present (pipelined, one round trip per node). One tag for everything would put the
whole load, and every key, on one shard (a slot cannot be split). No tags (every key its own slot) means
one command per key, and redis-py's cluster pipeline spends ~15 µs of CPU per MGET and ~23 µs per script
call (3-master local cluster, 500 keys), against ~37 µs for a whole event on the hit path. With 128
buckets, measured per key for a 2,000-key chunk: lookup ~5.5 µs and guard ~9.7 µs of client CPU more than
on one redis-server (most of it redis-py packing arguments in Python; the cluster client does not take
our C packer). The tags are chosen so their slots are evenly spaced over the 16384: every node of an
evenly sliced cluster holds 128/n of them (±1), and moving one slot moves 1/128 of the keys.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
from redis.asyncio import Connection, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AuthenticationError, DataError, RedisClusterException, RedisError
from redis.utils import HIREDIS_AVAILABLE

from workers.contract.errors import ConfigError
from workers.contract.results import ListingResult
from workers.model.identity import cache_id

if TYPE_CHECKING:
    from workers.runtime.config import CacheConfig
    from workers.runtime.metrics import WorkerMetrics

__all__ = [
    "CLUSTER_BUCKETS",
    "CPackedConnection",
    "RedisClient",
    "ResultCache",
    "bucket_tag",
    "make_redis_client",
    "make_result_cache",
    "redis_client_for",
    "redis_security",
    "safe_url",
    "unique_keys",
]

log = logging.getLogger(__name__)

# Bumped when the cached value's layout changes, so old entries are never read as new ones.
_VALUE_FORMAT = "r2"

CLUSTER_BUCKETS = 128  # hash tags on a Redis Cluster: see the module docstring

RedisClient = Redis | RedisCluster
# What a failed call raises: RedisClusterException (e.g. no node reachable) is not a RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)


@functools.cache
def _bucket_tags() -> tuple[str, ...]:
    """Tag i is the first "{i.j}" whose slot lies in the i-th of CLUSTER_BUCKETS equal slot ranges."""
    width = REDIS_CLUSTER_HASH_SLOTS // CLUSTER_BUCKETS
    tags = []
    for bucket in range(CLUSTER_BUCKETS):
        j = 0
        while key_slot(f"{bucket}.{j}".encode()) // width != bucket:
            j += 1
        tags.append(f"{{{bucket}.{j}}}")
    return tuple(tags)


def bucket_tag(text: str) -> str:
    """The hash tag (with its braces) of ``text``'s bucket: the same text always lands in the same slot."""
    return _bucket_tags()[zlib.crc32(text.encode("utf-8", "surrogatepass")) % CLUSTER_BUCKETS]


def check_key_prefix(prefix: str) -> None:
    """On a cluster the bucket tag must be the key's first "{...}", the one Redis hashes."""
    if "{" in prefix:
        raise ConfigError(f"key prefix {prefix!r} holds '{{': it would be hashed instead of the bucket tag")


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


def redis_security(config: CacheConfig) -> dict[str, Any]:
    """redis-py options for AUTH and TLS from the cache config: ACL user, the password read from its file
    (never from a ConfigMap), the CA for a `rediss://` URL. An unreadable file is a ConfigError."""
    options: dict[str, Any] = {}
    if config.redis_username:
        options["username"] = config.redis_username
    if config.redis_password_file is not None:
        try:
            options["password"] = config.redis_password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"ENRICH_REDIS_PASSWORD_FILE: cannot read {str(config.redis_password_file)!r}: "
                              f"{exc.strerror}") from None
    if config.redis_ca_file is not None:
        if not config.redis_url.startswith("rediss://"):
            raise ConfigError("ENRICH_REDIS_CA_FILE is set but ENRICH_REDIS_URL is not a rediss:// (TLS) URL")
        if not config.redis_ca_file.is_file():
            raise ConfigError(f"ENRICH_REDIS_CA_FILE: no file {str(config.redis_ca_file)!r}")
        options["ssl_ca_certs"] = str(config.redis_ca_file)
    return options


def redis_client_for(config: CacheConfig) -> RedisClient | None:
    """The cache's and the guard's client as `config` describes it; None when no Redis is configured."""
    if not config.redis_url:
        return None
    return make_redis_client(config.redis_url, cluster=config.redis_cluster, security=redis_security(config))


def safe_url(url: str) -> str:
    """`url` with any password in it masked, for logs and error messages."""
    parsed = urlsplit(url)
    if parsed.password is None:
        return url
    user = f"{parsed.username}:" if parsed.username else ":"
    return urlunsplit(parsed._replace(netloc=f"{user}*****@{parsed.hostname}:{parsed.port}"))


def make_redis_client(
    url: str,
    *,
    cluster: bool = False,
    socket_timeout_s: float = 0.25,
    connect_timeout_s: float = 0.25,
    security: Mapping[str, Any] | None = None,
) -> RedisClient:
    """A client suited to the cache and the guard: short timeouts and one immediate retry.

    The single retry lets a pooled connection that died with a Redis restart be replaced transparently;
    more retries would only stretch the stall when Redis is really gone. ``cluster``: ``url`` names one
    node of a Redis Cluster and the client finds the others. ``security``: `redis_security` (AUTH, TLS).
    Refuses (ConfigError) a reachable Redis whose mode is not the configured one, or that refuses the
    password or the TLS handshake; an unreachable one is left to the usual outage handling.
    """
    security = dict(security or {})
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 10,
        **security,
    }
    check_redis_mode(url, cluster=cluster, timeout_s=connect_timeout_s, security=security)
    if cluster:
        return RedisCluster.from_url(url, **options)
    if HIREDIS_AVAILABLE and url.startswith("redis://"):
        options["connection_class"] = CPackedConnection
    return Redis.from_url(url, **options)


def check_redis_mode(
    url: str, *, cluster: bool, timeout_s: float, security: Mapping[str, Any] | None = None
) -> None:
    """ConfigError when the Redis at ``url`` answers and its `cluster_enabled` is not ``cluster``, or when
    it refuses the credentials or the TLS handshake (waiting would not help: a wrong secret stays wrong).

    Without this a cluster addressed as one server degrades quietly: every multi-key call fails with
    CROSSSLOT or MOVED, so the cache never hits and the guard only remembers what this worker saw.
    """
    shown = safe_url(url)
    probe = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                 **(security or {}))
    try:
        enabled = bool(probe.info("cluster").get("cluster_enabled"))
    except AuthenticationError as exc:
        raise ConfigError(f"the Redis at {shown} refused the credentials ({exc}): check "
                          "ENRICH_REDIS_USERNAME / ENRICH_REDIS_PASSWORD_FILE (or user:password in the URL)"
                          ) from None
    except (RedisError, OSError) as exc:
        if "certificate verify failed" in str(exc) or "SSL" in type(exc).__name__:
            raise ConfigError(f"TLS with the Redis at {shown} failed ({exc}): check ENRICH_REDIS_CA_FILE "
                              "(the CA that signed the server's certificate)") from None
        log.warning("could not ask the Redis at %s whether it is a cluster (checked at next start): %r",
                    shown, exc)
        return
    finally:
        probe.close()
    if enabled and not cluster:
        raise ConfigError(f"the Redis at {shown} is a Redis Cluster node: set ENRICH_REDIS_CLUSTER=true "
                          "(--redis-cluster)")
    if cluster and not enabled:
        raise ConfigError(f"ENRICH_REDIS_CLUSTER is set but the Redis at {shown} is not in cluster mode")


class ResultCache:
    """Cached inference results keyed by the model digest and the hash of the exact title.

    ``client=None`` disables the cache: every lookup misses (not counted), writes are no-ops.
    """

    def __init__(
        self,
        client: RedisClient | None,
        model_digest: str,
        ttl_s: int,
        metrics: WorkerMetrics | None = None,
        *,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0 seconds, got {ttl_s}")
        self._client = client
        self._prefix = f"enrich:{cache_id(model_digest)}:{_VALUE_FORMAT}:"
        self._cluster = isinstance(client, RedisCluster)
        if self._cluster:
            check_key_prefix(self._prefix)
        self._ttl_s = ttl_s
        self._metrics = metrics
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._skip_until = 0.0

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def for_model(self, model_digest: str) -> ResultCache:
        """The cache of another model's results on the same client (a hot swap: `Serving`)."""
        return ResultCache(self._client, model_digest, self._ttl_s, self._metrics,
                           retry_after_s=self._retry_after_s, clock=self._clock)  # fmt: skip

    def key_for(self, text: str) -> str:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        if self._cluster:
            return f"{self._prefix}{bucket_tag(digest)}:{digest}"
        return self._prefix + digest

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
        """Values for ``keys`` in order (None = miss) with one MGET (cluster: one per hash slot, pipelined);
        on any Redis failure all None."""
        if not keys or self._client is None:
            return [None] * len(keys)
        if self._in_cooldown():
            self._count_error()
            return [None] * len(keys)
        try:
            if isinstance(self._client, RedisCluster):
                values: list[bytes | None] = await self._client.mget_nonatomic(keys)
            else:
                values = await self._client.mget(keys)
        except REDIS_FAILURES as exc:
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
        except REDIS_FAILURES as exc:
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
    config: CacheConfig, model_digest: str, metrics: WorkerMetrics | None = None
) -> ResultCache:
    """The cache ``config`` describes; an empty ``redis_url`` gives a disabled cache (always misses)."""
    return ResultCache(redis_client_for(config), model_digest, config.ttl_s, metrics)
