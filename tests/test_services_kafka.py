"""The local Kafka (4.1.1, KRaft) works with both Python clients the project uses: confluent-kafka for the
worker's hot path and aiokafka for Faust. Real broker, unique topics per test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Message, Producer
from confluent_kafka import TopicPartition as CkTopicPartition

from devtools.services.kafka import KafkaCluster
from tests.service_fixtures import produce_confirmed

pytestmark = pytest.mark.services

_WAIT_S = 30.0


def _producer(kafka: KafkaCluster, **extra: str | int | bool) -> Producer:
    return Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True,
                     "acks": "all", **extra})


def _consumer(kafka: KafkaCluster, group: str, **extra: str | int | bool) -> Consumer:
    return Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False, **extra})


def _produce(producer: Producer, topic: str, values: list[bytes]) -> None:
    produce_confirmed(producer, topic, values, keyed=True, timeout_s=_WAIT_S)


def _consume(consumer: Consumer, count: int) -> list[Message]:
    """Exactly `count` records (bounded wait); fails on a consumer error."""
    received: list[Message] = []
    deadline = time.monotonic() + _WAIT_S
    while len(received) < count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=count - len(received), timeout=0.5):
            assert msg.error() is None, msg.error()
            received.append(msg)
    assert len(received) == count, f"got {len(received)} of {count} records"
    return received


def _values(n: int, tag: str = "v") -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(n)]


def test_confluent_kafka_produce_consume(kafka: KafkaCluster, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    _produce(_producer(kafka), topic, _values(10))
    consumer = _consumer(kafka, f"g-{uuid.uuid4().hex}")
    consumer.subscribe([topic])
    try:
        received = _consume(consumer, 10)
    finally:
        consumer.close()
    assert sorted(m.value() for m in received) == sorted(_values(10))
    assert all(m.key() == m.value() for m in received)


def test_aiokafka_produce_consume_and_interop(kafka: KafkaCluster, new_topic: Callable[..., str]) -> None:
    """aiokafka (Faust's client) writes what confluent-kafka reads and reads what it writes."""
    from_aiokafka, from_confluent = new_topic(), new_topic()
    _produce(_producer(kafka), from_confluent, _values(5, "ck"))

    async def roundtrip() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all",
                                    enable_idempotence=True)
        await producer.start()
        try:
            for value in _values(5, "aio"):
                await producer.send_and_wait(from_aiokafka, value, key=value)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(from_confluent, bootstrap_servers=kafka.bootstrap_servers,
                                    group_id=f"g-{uuid.uuid4().hex}", auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            return await _aiokafka_take(consumer, 5)
        finally:
            await consumer.stop()

    assert asyncio.run(roundtrip()) == _values(5, "ck")
    consumer = _consumer(kafka, f"g-{uuid.uuid4().hex}")
    consumer.subscribe([from_aiokafka])
    try:
        assert [m.value() for m in _consume(consumer, 5)] == _values(5, "aio")
    finally:
        consumer.close()


async def _aiokafka_take(consumer: AIOKafkaConsumer, count: int) -> list[bytes]:
    received: list[bytes] = []
    deadline = time.monotonic() + _WAIT_S
    while len(received) < count and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500, max_records=count - len(received))
        for records in batches.values():
            received.extend(record.value for record in records if record.value is not None)
    assert len(received) == count, f"got {len(received)} of {count} records"
    return received


def test_confluent_group_resumes_after_commit_and_restart(kafka: KafkaCluster,
                                                         new_topic: Callable[..., str]) -> None:
    topic, group = new_topic(), f"g-{uuid.uuid4().hex}"
    _produce(_producer(kafka), topic, _values(10))
    first = _consumer(kafka, group)
    first.subscribe([topic])
    taken = _consume(first, 4)
    first.commit(offsets=[CkTopicPartition(topic, 0, taken[-1].offset() + 1)], asynchronous=False)
    first.close()

    second = _consumer(kafka, group)
    second.subscribe([topic])
    try:
        rest = _consume(second, 6)
    finally:
        second.close()
    assert [m.value() for m in taken + rest] == _values(10)
    assert rest[0].offset() == 4


def test_aiokafka_group_resumes_after_commit_and_restart(kafka: KafkaCluster,
                                                        new_topic: Callable[..., str]) -> None:
    topic, group = new_topic(), f"g-{uuid.uuid4().hex}"
    _produce(_producer(kafka), topic, _values(10))

    async def take_then_resume() -> tuple[list[bytes], list[bytes]]:
        def new_consumer() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False)

        first = new_consumer()
        await first.start()
        try:
            taken = await _aiokafka_take(first, 4)
            await first.commit({TopicPartition(topic, 0): 4})
        finally:
            await first.stop()
        second = new_consumer()
        await second.start()
        try:
            return taken, await _aiokafka_take(second, 6)
        finally:
            await second.stop()

    taken, rest = asyncio.run(take_then_resume())
    assert taken + rest == _values(10)


def test_consumer_lag_is_high_watermark_minus_committed(kafka: KafkaCluster,
                                                       new_topic: Callable[..., str]) -> None:
    topic, group = new_topic(partitions=2), f"g-{uuid.uuid4().hex}"
    producer = _producer(kafka)
    for partition, count in ((0, 7), (1, 3)):
        for value in _values(count, f"p{partition}-"):
            producer.produce(topic, value=value, partition=partition)
    assert producer.flush(_WAIT_S) == 0
    consumer = _consumer(kafka, group)
    try:
        consumer.commit(offsets=[CkTopicPartition(topic, 0, 5), CkTopicPartition(topic, 1, 3)],
                        asynchronous=False)
        committed = consumer.committed([CkTopicPartition(topic, 0), CkTopicPartition(topic, 1)], timeout=10)
        lag = {}
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag[tp.partition] = high - tp.offset
    finally:
        consumer.close()
    assert lag == {0: 2, 1: 0}
    # The group's offsets as an outside observer (KEDA's lag scaler, dashboards) reads them.
    request = ConsumerGroupTopicPartitions(group)
    admin = kafka.admin()  # held: a collected AdminClient never resolves its futures
    listed = admin.list_consumer_group_offsets([request])[group].result(timeout=_WAIT_S)
    assert {tp.partition: tp.offset for tp in listed.topic_partitions} == {0: 5, 1: 3}


def test_read_committed_hides_aborted_transactions(kafka: KafkaCluster,
                                                   new_topic: Callable[..., str]) -> None:
    topic = new_topic()
    producer = _producer(kafka, **{"transactional.id": f"tx-{uuid.uuid4().hex}"})
    producer.init_transactions(_WAIT_S)
    for values, commit in ((_values(3, "ok-a"), True), (_values(2, "aborted"), False),
                           (_values(1, "ok-b"), True)):
        producer.begin_transaction()
        for value in values:
            producer.produce(topic, value=value)
        producer.flush(_WAIT_S)
        if commit:
            producer.commit_transaction(_WAIT_S)
        else:
            producer.abort_transaction(_WAIT_S)
    committed_only = _values(3, "ok-a") + _values(1, "ok-b")

    def read(isolation: str, count: int) -> list[bytes]:
        consumer = _consumer(kafka, f"g-{uuid.uuid4().hex}", **{"isolation.level": isolation})
        consumer.subscribe([topic])
        try:
            return [m.value() for m in _consume(consumer, count)]
        finally:
            consumer.close()

    assert read("read_committed", 4) == committed_only
    assert read("read_uncommitted", 6) == _values(3, "ok-a") + _values(2, "aborted") + _values(1, "ok-b")

    async def read_with_aiokafka() -> list[bytes]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers,
                                    group_id=f"g-{uuid.uuid4().hex}", auto_offset_reset="earliest",
                                    isolation_level="read_committed")
        await consumer.start()
        try:
            return await _aiokafka_take(consumer, 4)
        finally:
            await consumer.stop()

    assert asyncio.run(read_with_aiokafka()) == committed_only


def test_broker_writes_its_log(kafka: KafkaCluster) -> None:
    """The log4j2 binding is on the classpath: start-up failures can be diagnosed from server.log."""
    server_log = kafka.nodes[1].server_log.read_text()
    assert "Kafka Server started" in server_log
    assert f"Kafka version: {kafka.version}" in server_log
