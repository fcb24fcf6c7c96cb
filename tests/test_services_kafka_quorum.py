"""Three-node KRaft quorum (RF 3, min.insync.replicas 2): losing the partition leader mid-stream loses no
acknowledged record, producing with acks=all and consuming keep working, and the node comes back."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import PartitionMetadata

from devtools.services.kafka import KafkaCluster
from tests.service_fixtures import produce_confirmed

pytestmark = pytest.mark.services

_WAIT_S = 60.0


def _produce(producer: Producer, topic: str, values: list[bytes]) -> None:
    produce_confirmed(producer, topic, values, timeout_s=_WAIT_S)


def _consume_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    received: list[bytes] = []
    deadline = time.monotonic() + _WAIT_S
    try:
        while len(received) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=count, timeout=0.5):
                assert msg.error() is None, msg.error()
                received.append(msg.value())
    finally:
        consumer.close()
    return received


def _partition_zero(cluster: KafkaCluster, topic: str) -> PartitionMetadata:
    return cluster.admin().list_topics(topic=topic, timeout=10).topics[topic].partitions[0]


def test_three_node_quorum_survives_losing_the_leader(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path / "kafka", nodes=3).start()
    try:
        topic = "failover"
        cluster.create_topic(topic, partitions=1, replication_factor=3, config={"min.insync.replicas": "2"})
        producer = Producer({"bootstrap.servers": cluster.bootstrap_servers, "acks": "all",
                             "enable.idempotence": True})
        before = [f"before-{i}".encode() for i in range(5)]
        _produce(producer, topic, before)

        partition = _partition_zero(cluster, topic)
        assert sorted(partition.replicas) == [1, 2, 3]
        leader = partition.leader
        cluster.kill_node(leader)

        after = [f"after-{i}".encode() for i in range(5)]
        _produce(producer, topic, after)
        assert _consume_all(cluster.bootstrap_servers, topic, 10) == before + after
        assert _partition_zero(cluster, topic).leader not in (leader, -1)

        cluster.start_node(leader)
        assert set(cluster.admin().list_topics(timeout=10).brokers) == {1, 2, 3}
    finally:
        cluster.stop(graceful=False)  # throwaway data: skips ~6 s of controlled shutdown on two cores
