"""Benchmark traffic: listing events in (as a backlog or at a fixed rate) and attribute events out.

Latency is measured from each listing's `event_time` (stamped when the bench produces it) to the
CreateTime of its attribute event (stamped by the worker's producer), so the bench's own reading delay
is not part of it. Both clocks are this machine's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from devtools.paths import FIXTURE_OFFERS

__all__ = [
    "FIXTURE_OFFERS",
    "OutputCollector",
    "PacedProducer",
    "fixture_titles",
    "listing_records",
    "produce_backlog",
]



def fixture_titles(path: Path = FIXTURE_OFFERS) -> list[str]:
    """The distinct titles of the fixture offers, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(json.loads(line)["input"] for line in lines if line.strip()))


def _iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def _listing(listing_id: str, title: str, event_ms: int) -> bytes:
    return orjson.dumps({
        "schema_version": 1, "listing_id": listing_id, "listing_version": 1, "title": title,
        "locale": "en_US", "marketplace": "US", "event_time": _iso_ms(event_ms),
    })  # fmt: skip


def listing_records(prefix: str, titles: list[str], count: int) -> list[tuple[bytes, bytes]]:
    """`count` listing v1 records (key, value) cycling through `titles`, ids `<prefix>-<n>`."""
    now_ms = int(time.time() * 1000)
    return [
        ((key := f"{prefix}-{i:07d}").encode(), _listing(key, titles[i % len(titles)], now_ms))
        for i in range(count)
    ]


def _producer(bootstrap: str, linger_ms: int) -> object:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "acks": "all",
                     "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000})  # fmt: skip


def produce_backlog(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Produce every record and wait for all acknowledgements (the backlog a worker then drains)."""
    producer = _producer(bootstrap, linger_ms=20)
    errors: list[str] = []
    for key, value in records:
        producer.produce(topic, value, key, on_delivery=lambda err, _: err and errors.append(str(err)))  # type: ignore[attr-defined]
        producer.poll(0)  # type: ignore[attr-defined]
    if producer.flush(60) or errors:  # type: ignore[attr-defined]
        raise RuntimeError(f"producing the backlog to {topic} failed: {errors[:3] or 'timed out'}")


class PacedProducer:
    """Produces listings at `rate` per second for `duration_s`, each stamped with its own event_time."""

    def __init__(self, bootstrap: str, topic: str, titles: list[str], prefix: str) -> None:
        self.bootstrap, self.topic, self.titles, self.prefix = bootstrap, topic, titles, prefix
        self.event_ms: dict[bytes, int] = {}

    def run(self, rate: float, duration_s: float) -> float:
        """Blocks until done; returns the rate actually achieved (records/s)."""
        producer = _producer(self.bootstrap, linger_ms=2)
        started = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - started) < duration_s:
            due = int(elapsed * rate)
            while sent < due:
                key = f"{self.prefix}-{sent:07d}"
                event_ms = int(time.time() * 1000)
                producer.produce(self.topic, _listing(key, self.titles[sent % len(self.titles)], event_ms),  # type: ignore[attr-defined]
                                 key.encode())  # fmt: skip
                self.event_ms[key.encode()] = event_ms
                sent += 1
            producer.poll(0)  # type: ignore[attr-defined]
            time.sleep(0.005)
        producer.flush(30)  # type: ignore[attr-defined]
        return sent / (time.perf_counter() - started)


@dataclass
class OutputCollector:
    """Reads an output topic from the beginning in a thread: (key, CreateTime ms, cache hit) per event."""

    bootstrap: str
    topic: str
    partitions: int = 1
    keys: list[bytes] = field(default_factory=list)
    times_ms: list[int] = field(default_factory=list)
    hits: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"collect-{self.topic}", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(30)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"bench-{time.time_ns()}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 20})  # fmt: skip
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)])
        self._ready.set()
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(1000, 0.05):
                    if msg.error() is not None:
                        continue
                    self.keys.append(msg.key())
                    self.times_ms.append(msg.timestamp()[1])
                    if b'"cache_hit":true' in msg.value():
                        self.hits += 1
        finally:
            consumer.close()

    @property
    def count(self) -> int:
        return len(self.times_ms)

    def wait_for(self, count: int, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
        """True once `count` events were read; False on timeout or when `alive()` turns false."""
        deadline = time.monotonic() + timeout_s
        while self.count < count:
            if time.monotonic() > deadline or not alive():
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
