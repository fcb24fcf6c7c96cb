"""Session fixtures for the real local services: Kafka (KRaft), redis-server, tritonserver.

Each service gets its own run folder from tmp_path_factory, so parallel test runs never collide; logs stay
there (pytest keeps the last few basetemp folders) for post-mortems.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devtools.services.kafka import KafkaCluster
from devtools.services.redis_cluster import RedisClusterServers
from devtools.services.redis_server import RedisServer
from devtools.services.triton import TritonServer

__all__ = [
    "any_redis",
    "kafka",
    "new_topic",
    "produce_confirmed",
    "redis_cluster",
    "redis_server",
    "redis_target",
    "triton_factory",
]


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One-node Kafka for the whole session; `.bootstrap_servers`. Topics are not auto-created."""
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka"))
    with cluster:
        try:
            yield cluster
        finally:
            # Throwaway data: a controlled shutdown of a broker with the session's hundreds of topics took
            # the whole 20 s grace (the suite's slowest teardown, 28 s) before the SIGKILL anyway.
            cluster.stop(graceful=False)


@pytest.fixture
def new_topic(kafka: KafkaCluster) -> Callable[..., str]:
    """Create a uniquely named topic on the session Kafka: `new_topic(partitions=1, config=None)`."""

    def create(partitions: int = 1, config: Mapping[str, str] | None = None, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        kafka.create_topic(name, partitions=partitions, config=config)
        return name

    return create


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """redis-server for the whole session; `.url`, `.port`, `.client()`."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster for the whole session; `.url` (one node), `.nodes`, `.client()`."""
    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


def redis_target(request: pytest.FixtureRequest, kind: str) -> tuple[str, bool]:
    """`(url, cluster)` of the session redis-server (kind "single") or Redis Cluster ("cluster")."""
    cluster = kind == "cluster"
    return request.getfixturevalue("redis_cluster" if cluster else "redis_server").url, cluster


@pytest.fixture(params=["single", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """`(url, cluster)`: a test using it runs on the session redis-server, then on the session cluster."""
    return redis_target(request, request.param)


@pytest.fixture(scope="session")
def triton_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TritonServer]]:
    """`triton_factory(model_repository, models=None, **kwargs)` starts a ready tritonserver (all models in
    the repository by default); every server started is stopped at the end of the session."""
    servers: list[TritonServer] = []

    def start(model_repository: Path, models: Sequence[str] | None = None, **kwargs: Any) -> TritonServer:
        server = TritonServer(tmp_path_factory.mktemp("triton"), model_repository, models=models, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    # Side by side: each stop waits for its python-backend stubs to exit (seconds), one after another
    # they were most of the session's last teardown (26 s in CI).
    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        list(pool.map(TritonServer.stop, servers))


def produce_confirmed(
    producer: Any, topic: str, values: list[bytes], *, keyed: bool = False, timeout_s: float = 60.0
) -> None:
    """Produce `values` (each its own key when `keyed`) and fail unless every one is acknowledged."""
    errors: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for value in values:
        producer.produce(topic, value=value, key=value if keyed else None, on_delivery=on_delivery)
    assert producer.flush(timeout_s) == 0, "records still undelivered"
    assert errors == []
