"""Reading a fixed range of a topic to its end as it was when a command started (`enrich dlq redrive`,
`enrich review export`): records produced meanwhile are the next run's, so a run always ends."""

from __future__ import annotations

from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, Message

from workers.contract.errors import KafkaOperationFailed

__all__ = ["read_to_end"]

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
