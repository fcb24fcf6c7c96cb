"""Consume stage: a confluent-kafka consumer group member with cooperative-sticky assignment.

`consume()` (librdkafka's batch consume) runs in one dedicated thread so the event loop stays free;
rebalance callbacks therefore arrive on that thread, and the pipeline's handlers block it until the
revoked partitions are drained and committed. Offsets are never auto-committed or auto-stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from workers.contract.errors import KafkaOperationFailed

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, TopicPartition

    from workers.runtime.config import KafkaConfig

__all__ = ["KafkaSource", "consumer_settings", "make_consumer"]

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[tuple[str, int]]], None]


def consumer_settings(config: KafkaConfig, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": config.bootstrap_servers,
        "group.id": config.group_id,
        "client.id": client_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": config.auto_offset_reset,
        "session.timeout.ms": config.session_timeout_ms,
        "heartbeat.interval.ms": max(100, config.session_timeout_ms // 5),
        # Inputs written by a transactional producer are read only once committed.
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
    }


def make_consumer(config: KafkaConfig, client_id: str) -> Consumer:
    from confluent_kafka import Consumer

    return Consumer(consumer_settings(config, client_id))


class KafkaSource:
    """The input side of one worker: subscribe, batch-consume in a thread, pause/resume, lag."""

    def __init__(self, consumer: Consumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self.assigned: set[tuple[str, int]] = set()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consume")
        self._paused = False

    def subscribe(
        self, *, on_assign: PartitionsCallback, on_revoke: PartitionsCallback, on_lost: PartitionsCallback
    ) -> None:
        """Join the group. The callbacks run on the consume thread with (topic, partition) keys."""

        def assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            keys = [(tp.topic, tp.partition) for tp in partitions]
            self.assigned.update(keys)
            log.info("partitions assigned: %s", keys, extra={"partitions": keys})
            if self._paused and partitions:
                # Assign first (the client would do it after this callback), so the pause applies to them.
                consumer.incremental_assign(partitions)
                consumer.pause(partitions)
            on_assign(keys)

        def revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            keys = [(tp.topic, tp.partition) for tp in partitions]
            log.info("partitions revoked: %s", keys, extra={"partitions": keys})
            try:
                on_revoke(keys)
            finally:
                self.assigned.difference_update(keys)

        def lost(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            keys = [(tp.topic, tp.partition) for tp in partitions]
            log.warning("partitions lost (not committing): %s", keys, extra={"partitions": keys})
            self.assigned.difference_update(keys)
            on_lost(keys)

        self.consumer.subscribe([self.topic], on_assign=assign, on_revoke=revoke, on_lost=lost)

    async def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to `max_messages` records (fewer after `timeout_s`); also serves rebalance callbacks."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._consume, max_messages, timeout_s)

    def _consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        from confluent_kafka import KafkaException

        try:
            return self.consumer.consume(max_messages, timeout_s)
        except KafkaException as exc:
            raise KafkaOperationFailed("consume", str(exc)) from exc

    def set_paused(self, paused: bool) -> None:
        """Pause (or resume) every assigned partition; partitions assigned while paused start paused."""
        if paused == self._paused:
            return
        self._paused = paused
        partitions = self._assignment()
        if not partitions:
            return
        if paused:
            self.consumer.pause(partitions)
        else:
            self.consumer.resume(partitions)
        log.info("partitions %s: %s", "paused" if paused else "resumed", [p.partition for p in partitions])

    @property
    def paused(self) -> bool:
        return self._paused

    def _assignment(self) -> list[TopicPartition]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(topic, partition) for topic, partition in sorted(self.assigned)]

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages between the consumer's position and the high watermark, per assigned partition."""
        partitions = self._assignment()
        if not partitions:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for tp in self.consumer.position(partitions):
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                lags[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return lags

    async def close(self) -> None:
        """Leave the group (runs the revoke callback for what is still assigned) and stop the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.consumer.close)
        self._thread.shutdown(wait=True)
