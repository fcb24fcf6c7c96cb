"""The idempotent producer under the emit and dead-letter stages: produce, and hear each ack on the loop.

Delivery reports are served by a small polling thread and handed to the event loop; `on_delivered`
runs there only after the broker acknowledged the record (`produce`), or all records of a batch
(`produce_batch`: one hand-over to the loop per batch instead of one per record). The first failed
delivery is kept and raised by `raise_if_failed()`, so the pipeline stops before any offset past an
undelivered record finishes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from workers.contract.errors import DeliveryFailed, KafkaOperationFailed
from workers.runtime.kafka_security import client_config
from workers.stages.commit import failure_kind

if TYPE_CHECKING:
    from workers.runtime.config import KafkaConfig

__all__ = ["AsyncProducer", "make_producer", "producer_settings"]

log = logging.getLogger(__name__)

# Delivery errors of records purged by abort_transaction (exactly-once, on lost partitions or at a failed
# shutdown): not failures; the policy reset the offset tracker first, so their offsets never finish.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


def producer_settings(config: KafkaConfig, worker_id: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "client.id": worker_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    if config.exactly_once:
        # Stable per worker so a restarted instance fences its predecessor and aborts its open transaction.
        settings["transactional.id"] = f"{config.group_id}.{worker_id}"
        settings["transaction.timeout.ms"] = config.transaction_timeout_ms
    return client_config(config.bootstrap_servers, settings, config.properties)


def make_producer(config: KafkaConfig, worker_id: str) -> Producer:
    return Producer(producer_settings(config, worker_id))


class AsyncProducer:
    """Produces records and reports each acknowledgement back on the event loop."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._generation = 0  # bumped by `replace`: reports of a replaced producer are ignored
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: DeliveryFailed | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, name="kafka-delivery", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving delivery reports; they are handed to `loop`."""
        self._loop = loop
        self._poller.start()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("AsyncProducer.start(loop) has not been called")
        return self._loop

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.poll(0.05)
            except KafkaException as exc:
                # poll() raises a producer's fatal error (e.g. fenced): the thread must live on, or no
                # delivery report would ever be served again and the worker would hang without a word.
                self._loop_fail(exc)
                self._stop.wait(0.05)

    def _loop_fail(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._fail, error, "(producer)", None)

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_delivered: Callable[[], None],
        headers: list[tuple[str, bytes]] | None = None,
        current: Callable[[], bool] | None = None,
    ) -> None:
        """Queue one record; `on_delivered()` runs on the loop once it is acknowledged."""
        await self.produce_batch(topic, [(key, value)], on_delivered, headers, current)

    async def produce_batch(
        self,
        topic: str,
        records: list[tuple[bytes | None, bytes]],
        on_delivered: Callable[[], None],
        headers: list[tuple[str, bytes]] | None = None,
        current: Callable[[], bool] | None = None,
    ) -> None:
        """Queue `(key, value)` records; `on_delivered()` runs on the loop once all are acknowledged.

        `current()` is asked again after every wait for queue space (the only moments other code runs):
        once false (the records' transaction was aborted meanwhile), the rest is not produced."""
        self.raise_if_failed()
        if not records:
            on_delivered()
            return
        total = len(records)
        # next() on itertools.count is atomic under the GIL: reports may be served by the poller and by
        # flush() in another thread at once.
        acknowledged = itertools.count(1)
        loop, generation = self.loop, self._generation

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                if err.code() in _PURGED or generation != self._generation:
                    return  # discarded with its aborted transaction (or producer): the offset never finishes
                loop.call_soon_threadsafe(self._fail, err, topic, msg.key())
            elif next(acknowledged) == total:
                loop.call_soon_threadsafe(on_delivered)

        produce = self.producer.produce
        index = 0
        while index < total:
            key, value = records[index]
            try:
                produce(topic, value, key, headers=headers, on_delivery=report)
                index += 1
            except BufferError:
                await asyncio.sleep(0.005)  # local queue full: the poller drains it
                if current is not None and not current():
                    return
            except KafkaException as exc:
                raise KafkaOperationFailed("produce", f"topic {topic!r}: {exc}") from exc

    def _fail(self, err: KafkaError, topic: str, key: bytes | None) -> None:
        if self._failure is None:
            fatal, fenced = failure_kind(err)
            self._failure = DeliveryFailed(topic, key, str(err), fatal=fatal, fenced=fenced)
            log.error("%s", self._failure)

    @property
    def failure(self) -> DeliveryFailed | None:
        """The first failed delivery since the start (or `clear_failure`)."""
        return self._failure

    def raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def clear_failure(self) -> None:
        """The commit policy recovered from it (exactly-once: the transaction holding it was aborted)."""
        self._failure = None

    def replace(self, producer: Producer) -> None:
        """Serve `producer` from now on (exactly-once, after a fatal error); the old one is dropped and its
        outstanding reports ignored: its transaction is aborted by the new one's `init_transactions`."""
        self._generation += 1
        old, self.producer = self.producer, producer
        self._failure = None
        try:
            old.purge(in_queue=True, in_flight=True, blocking=False)
        except KafkaException as exc:  # a fatal producer may refuse even this: it is dropped either way
            log.warning("purging the replaced producer failed: %s", exc)

    async def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still not acknowledged."""
        remaining = await asyncio.to_thread(self.producer.flush, timeout_s)
        await asyncio.sleep(0)  # let the last delivery reports run
        return int(remaining)

    def close(self) -> None:
        """Stop the delivery poller and drop the producer (destroyed when its last reference goes)."""
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(timeout=5)
        del self.producer
