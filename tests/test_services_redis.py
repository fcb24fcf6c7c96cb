"""The local redis-server (Debian's) answers real commands on its loopback port."""

from __future__ import annotations

import pytest
import redis

from devtools.services.redis_server import RedisServer

pytestmark = pytest.mark.services


def test_redis_round_trip(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("enrich:test:one", b"\x00value", ex=60)
        with client.pipeline(transaction=False) as pipe:
            pipe.set("enrich:test:two", "2", ex=60)
            pipe.execute()
        assert client.mget(["enrich:test:one", "enrich:test:two", "enrich:test:missing"]) == [
            b"\x00value", b"2", None]
        assert 0 < client.ttl("enrich:test:one") <= 60
    finally:
        client.close()


def test_redis_has_no_persistence(redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        client.close()
