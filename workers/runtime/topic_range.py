"""Reading a fixed range of a topic to its end as it was when a command started (`enrich dlq redrive`,
`enrich review export`, `enrich rollout report`): records produced meanwhile are the next run's, so a run
always ends."""

from __future__ import annotations

import os
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from workers.contract.errors import ConfigError, KafkaOperationFailed
from workers.runtime.kafka_security import client_config

__all__ = ["read_to_end", "read_whole_topic"]

_CHUNK = 500


def read_to_end(
    consumer: Consumer, ends: dict[int, int], what: str, timeout_s: float
) -> Iterator[list[Message]]:
    """Chunks of the records of the assigned partitions below `ends` (partition -> end offset, exclusive;
    emptied as partitions reach it), one per consume() call; KafkaOperationFailed naming `what` when a
    read fails or nothing arrives for 5 s while records are still due."""
    while ends:
        messages = consumer.consume(_CHUNK, min(timeout_s, 5.0))
        if not messages:
            raise KafkaOperationFailed(what, f"no records within 5 s; still to read: {ends}")
        chunk: list[Message] = []
        for msg in messages:
            partition, error = msg.partition(), msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaOperationFailed(what, str(error))
                ends.pop(partition, None)  # the end (a transaction marker may sit at high - 1)
                continue
            if partition not in ends or msg.offset() >= ends[partition]:
                continue  # produced after the run started: the next run's
            chunk.append(msg)
            if msg.offset() + 1 >= ends[partition]:
                ends.pop(partition)
        yield chunk


def read_whole_topic(
    bootstrap: str, topic: str, what: str, missing: str, timeout_s: float
) -> Iterator[Message]:
    """Every record of `topic` from its oldest to its end as of the call, read by an assign-only consumer
    that commits nothing (every run sees the whole retained topic); ConfigError(`missing`) without it."""
    consumer = Consumer(client_config(bootstrap, {
        "group.id": f"enrich-{what.replace(' ', '-')}-{os.getpid()}", "enable.auto.commit": False,
        "enable.partition.eof": True, "isolation.level": "read_committed",
    }))  # fmt: skip
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ConfigError(missing)
        starts, ends = [], {}
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            if low < high:
                starts.append(TopicPartition(topic, partition, low))
                ends[partition] = high
        if starts:
            consumer.assign(starts)
        for chunk in read_to_end(consumer, ends, what, timeout_s):
            yield from chunk
    finally:
        consumer.close()
