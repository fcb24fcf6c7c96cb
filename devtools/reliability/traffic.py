"""Traffic for the scenarios: valid listings with unique ids, produced at a steady pace by a thread that
records where each record landed (partition, offset) and what must become of it."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaError, Message, Producer

from devtools.paths import FIXTURE_OFFERS

__all__ = ["OUTPUT", "Expected", "PacedProducer", "Record", "fixture_titles", "valid_listings"]

OUTPUT = "output"  # the expected outcome of a valid listing; hostile records expect "dlq:<code>"
PRODUCER_MAX_BYTES = 16 * 1024 * 1024  # room for the 10 MB hostile payloads (the topic must allow them too)


@dataclass(frozen=True, slots=True)
class Expected:
    """What must become of one input record: a label for reports and the acceptable outcomes."""

    label: str
    kind: str
    outcomes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None
    value: bytes | None
    expected: Expected


def fixture_titles() -> list[str]:
    lines = FIXTURE_OFFERS.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["input"] for line in lines if line]


def listing_event(listing_id: str, title: str, version: int = 1) -> bytes:
    return orjson.dumps({
        "schema_version": 1, "listing_id": listing_id, "listing_version": version, "title": title,
        "locale": "en_US", "marketplace": "US", "event_time": "2026-11-29T07:00:00Z",
    })  # fmt: skip


def valid_listings(count: int, *, prefix: str = "L", seed: int = 0, unique_titles: bool = False
                   ) -> Iterator[Record]:  # fmt: skip
    """Fixture titles (repeating, so the result cache hits), or each made unique (every one inferred)."""
    titles = fixture_titles()
    rng = random.Random(seed)
    for index in range(count):
        listing_id = f"{prefix}-{index:07d}"
        title = rng.choice(titles) + (f" lot {index}" if unique_titles else "")
        yield Record(
            listing_id.encode(), listing_event(listing_id, title),
            Expected(listing_id, "valid", frozenset({OUTPUT})),
        )  # fmt: skip


class PacedProducer:
    """Produces `records` at `rate` per second (0: as fast as possible) from a thread, with an idempotent
    producer; `placed` maps (partition, offset) of every acknowledged record to its expectation."""

    def __init__(self, bootstrap: str, topic: str, records: Iterable[Record], rate: float) -> None:
        self.topic = topic
        self.rate = rate
        self.placed: dict[tuple[int, int], Expected] = {}
        self.errors: list[str] = []
        self.produced = 0
        self._records = records
        self._lock = threading.Lock()
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "message.max.bytes": PRODUCER_MAX_BYTES, "message.timeout.ms": 600_000, "log_level": 3,
        })  # fmt: skip
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        try:
            for count, record in enumerate(self._records):
                if self.rate > 0:
                    delay = started + count / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self._produce(record)
                self.produced += 1
            while self._producer.flush(1.0):
                pass
        finally:
            self._done.set()

    def _produce(self, record: Record) -> None:
        def delivered(err: KafkaError | None, msg: Message, expected: Expected = record.expected) -> None:
            with self._lock:
                if err is not None:
                    self.errors.append(f"{expected.label}: {err}")
                else:
                    self.placed[(msg.partition(), msg.offset())] = expected

        while True:
            try:
                self._producer.produce(self.topic, key=record.key, value=record.value, on_delivery=delivered)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def snapshot(self) -> dict[tuple[int, int], Expected]:
        """A copy of `placed`, safe while delivery reports keep arriving on the producer thread."""
        with self._lock:
            return dict(self.placed)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Wait until every record is produced and acknowledged (or failed)."""
        return self._done.wait(timeout_s)
