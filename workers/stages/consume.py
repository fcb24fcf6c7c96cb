"""Consume stage: a confluent-kafka consumer group member with cooperative-sticky assignment.

`consume()` (librdkafka's batch consume) runs in one dedicated thread so the event loop stays free;
rebalance callbacks therefore arrive on that thread, and the pipeline's handlers block it until the
revoked partitions are drained and committed. Offsets are never auto-committed or auto-stored.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from workers.contract.errors import KafkaOperationFailed
from workers.runtime.kafka_security import client_config

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, TopicPartition

    from workers.runtime.config import KafkaConfig

__all__ = ["KafkaSource", "consumer_settings", "make_consumer"]

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[tuple[str, int]]], None]
T = TypeVar("T")


def consumer_settings(
    config: KafkaConfig,
    client_id: str,
    on_commit: Callable[[Any, list[Any]], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`on_commit` hears the broker's answer to every offset commit (served in `consume()`); `extra` adds
    properties (e.g. `BrokerHealth.client_settings()`); the operator's properties (`config.properties`:
    security) go on top through `client_config`."""
    settings: dict[str, Any] = {
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
    if on_commit is not None:
        settings["on_commit"] = on_commit
    settings.update(extra or {})
    return client_config(config.bootstrap_servers, settings, config.properties)


def make_consumer(
    config: KafkaConfig,
    client_id: str,
    on_commit: Callable[[Any, list[Any]], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Consumer:
    from confluent_kafka import Consumer

    return Consumer(consumer_settings(config, client_id, on_commit, extra))


class KafkaSource:
    """The input side of one worker: subscribe, batch-consume in a thread, pause/resume; and the
    consumer calls of the commit policy (`commit`, `consumer_group_metadata`), from any thread.

    confluent-kafka lets one thread into a consumer at a time (a re-entrant call from a callback's own
    thread passes; the others wait in `Handle_serialize_enter`). A rebalance callback runs inside
    consume() and waits for the event loop, so a policy call from another thread then waited forever
    (seen: a revoke's transaction commit hung in consumer_group_metadata(); a zombie test's worker hung in
    a commit that had started to wait just before the revoke callback began). So a call made while
    consume() runs is never made from its own thread: it is handed to the consume thread, which runs it
    inside a waiting callback (`wait_in_callback`) or as soon as consume() returns (within its timeout).
    """

    def __init__(self, consumer: Consumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self.assigned: set[tuple[str, int]] = set()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consume")
        self._paused = False
        # Calls handed to the consume thread; None wakes a waiting callback whose future is done.
        self._handover: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._handover_lock = threading.Lock()
        self._in_consume = False
        self._consume_thread: int | None = None

    # ---- consumer calls from any thread ------------------------------------------------------------

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        return self._call(partial(self.consumer.commit, offsets=offsets, asynchronous=asynchronous))

    def consumer_group_metadata(self) -> Any:
        return self._call(self.consumer.consumer_group_metadata)

    def _call(self, call: Callable[[], T]) -> T:
        if threading.get_ident() == self._consume_thread:
            return call()
        with self._handover_lock:
            handed = self._in_consume
            if handed:
                result: Future[T] = Future()
                self._handover.put((call, result))
        return result.result() if handed else call()  # not in consume(): consume() waits for this call

    def wait_in_callback(self, done: Future[T]) -> T:
        """Consume thread, in a rebalance callback: wait for `done`, running the handed-over calls."""
        done.add_done_callback(lambda _: self._handover.put(None))
        while (job := self._handover.get()) is not None:
            _run(*job)
        return done.result()

    def _run_handed_over(self) -> None:
        """Consume thread, consume() returned: run what was handed over meanwhile."""
        while True:
            try:
                job = self._handover.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                _run(*job)

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

        self._consume_thread = threading.get_ident()
        with self._handover_lock:
            self._in_consume = True
        try:
            return self.consumer.consume(max_messages, timeout_s)
        except KafkaException as exc:
            raise KafkaOperationFailed("consume", str(exc)) from exc
        finally:
            with self._handover_lock:
                self._in_consume = False
            self._run_handed_over()

    async def rewind(self) -> dict[tuple[str, int], int]:
        """Seek every assigned partition back to its committed offset (never committed: the beginning);
        on the consume thread, between two `consume` calls. Returns the offsets sought to."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._rewind)

    def _rewind(self) -> dict[tuple[str, int], int]:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        partitions = self._assignment()
        if not partitions:
            return {}
        offsets: dict[tuple[str, int], int] = {}
        try:
            for tp in self.consumer.committed(partitions, timeout=30):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
                offsets[(tp.topic, tp.partition)] = offset
        except KafkaException as exc:
            raise KafkaOperationFailed("rewind", str(exc)) from exc
        log.warning("partitions rewound to their committed offsets: %s", offsets)
        return offsets

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

    async def close(self) -> None:
        """Leave the group (runs the revoke callback for what is still assigned) and stop the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.consumer.close)
        self._thread.shutdown(wait=True)


def _run(call: Callable[[], T], result: Future[T]) -> None:
    try:
        result.set_result(call())
    except BaseException as exc:  # handed back to the caller's thread
        result.set_exception(exc)
