"""Producing harness traffic: a batch acknowledged as a whole, or a steady stream from a thread.

Both use an idempotent producer with acks=all, so a broker hiccup never duplicates or drops the harness's
own input (the figures must only show what the worker did). The paced producer records where every
acknowledged record landed, (partition, offset), because that is how the reliability ledger identifies an
input; the bench uses the same thread for its latency pass, stamping each listing as it is produced.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from devtools.harness.listings import Expected, Record
from workers.runtime.kafka_security import client_config

__all__ = ["PRODUCER_MAX_BYTES", "PacedProducer", "produce_records"]

PRODUCER_MAX_BYTES = 16 * 1024 * 1024  # room for the 10 MB hostile payloads (the topic must allow them too)


def _producer(bootstrap: str, linger_ms: int, **extra: Any) -> Producer:
    return Producer(client_config(bootstrap, {
        "enable.idempotence": True, "acks": "all", "linger.ms": linger_ms,
        "queue.buffering.max.messages": 1_000_000, "log_level": 3, **extra,
    }))  # fmt: skip


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None,
             on_delivery: Any) -> None:  # fmt: skip
    """Produce one record, waiting for room in the local queue instead of failing when it is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def produce_records(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]], *,
                    timeout_s: float = 30, linger_ms: int = 5) -> int:  # fmt: skip
    """Produce (key, value) pairs and wait for every acknowledgement; returns how many were produced."""
    errors: list[str] = []
    producer = _producer(bootstrap, linger_ms)
    count = 0
    for key, value in records:
        _produce(producer, topic, key, value, lambda err, _: err and errors.append(str(err)))
        count += 1
    if producer.flush(timeout_s) or errors:
        raise KafkaException(f"producing to {topic!r} failed: {errors[:3] or 'not acknowledged in time'}")
    return count


class PacedProducer:
    """Produces `records` at `rate` per second (0: as fast as possible) from a thread, until they run out
    or, with `duration_s`, until the next record would be due after it; `placed` maps (partition, offset)
    of every acknowledged record to its expectation, `failed` holds the expectation of every record that
    was refused or never acknowledged (its reason in `errors`), so once done `produced` (every record
    taken) = len(placed) + len(failed): no record drops out of the count. Each record is taken from
    `records` only when due, so a lazily built one is stamped at the moment it is produced."""

    def __init__(self, bootstrap: str, topic: str, records: Iterable[Record], rate: float, *,
                 duration_s: float | None = None, linger_ms: int = 5) -> None:  # fmt: skip
        self.topic = topic
        self.rate = rate
        self.duration_s = duration_s
        self.placed: dict[tuple[int, int], Expected] = {}
        self.failed: list[Expected] = []
        self.errors: list[str] = []
        self.produced = 0
        self.seconds = 0.0  # from the first record until the last was acknowledged
        self._records = records
        self._lock = threading.Lock()
        self._producer = _producer(bootstrap, linger_ms, **{
            "message.max.bytes": PRODUCER_MAX_BYTES, "message.timeout.ms": 600_000})  # fmt: skip
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"paced-producer-{topic}", daemon=True)

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        records = iter(self._records)
        try:
            for count in itertools.count():
                if self.rate > 0:
                    if self.duration_s is not None and count / self.rate >= self.duration_s:
                        break
                    delay = started + count / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                record = next(records, None)
                if record is None:
                    break
                self.produced += 1
                self._produce(record)
            while self._producer.flush(1.0):
                pass
        except Exception as exc:  # the records not yet taken were never input; say why they stopped
            with self._lock:
                self.errors.append(f"producer stopped after {self.produced} records: {exc!r}")
            raise
        finally:
            self.seconds = time.monotonic() - started
            self._done.set()

    def _produce(self, record: Record) -> None:
        def delivered(err: KafkaError | None, msg: Message, expected: Expected = record.expected) -> None:
            if err is not None:
                self._fail(expected, err)
                return
            with self._lock:
                self.placed[(msg.partition(), msg.offset())] = expected

        try:
            _produce(self._producer, self.topic, record.key, record.value, delivered)
        except KafkaException as exc:  # refused before it was queued (e.g. over message.max.bytes)
            self._fail(record.expected, exc)

    def _fail(self, expected: Expected, error: object) -> None:
        with self._lock:
            self.failed.append(expected)
            self.errors.append(f"{expected.label}: {error}")

    def snapshot(self) -> dict[tuple[int, int], Expected]:
        """A copy of `placed`, safe while delivery reports keep arriving on the producer thread."""
        with self._lock:
            return dict(self.placed)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def achieved_rate(self) -> float:
        """Records per second actually produced and acknowledged (once done)."""
        return len(self.placed) / self.seconds if self.seconds > 0 else 0.0

    def wait(self, timeout_s: float) -> bool:
        """Wait until every record is produced and acknowledged (or failed)."""
        return self._done.wait(timeout_s)
