"""Reading events back: all at once until enough arrived (demo, tests), or continuously in a thread with
each event's CreateTime (the bench, whose throughput and latency come from the worker's own timestamps,
so the reader's delay is not part of them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from workers.runtime.kafka_security import client_config

__all__ = ["OutputCollector", "read_events"]


def read_events(
    bootstrap: str, topic: str, *, expected: int | None = None, timeout_s: float = 30.0,
    from_beginning: bool = True, read_committed: bool = True, raw: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """JSON events of `topic` until `expected` were read or `timeout_s` passed (each with `_partition`);
    with `raw`, `{"key", "value", "_partition"}` dicts of the undecoded bytes."""
    consumer = Consumer(client_config(bootstrap, {
        "group.id": f"reader-{time.time_ns()}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
    }))  # fmt: skip
    consumer.subscribe([topic])
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and (expected is None or len(events) < expected):
            for msg in consumer.consume(500, 0.2):
                if msg.error() is not None:
                    continue
                record = {"key": msg.key(), "value": msg.value()} if raw else orjson.loads(msg.value())
                events.append({**record, "_partition": msg.partition()})
    finally:
        consumer.close()
    return events


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
        consumer = Consumer(client_config(self.bootstrap, {"group.id": f"bench-{time.time_ns()}",
                                                           "enable.auto.commit": False,
                                                           "fetch.wait.max.ms": 20}))  # fmt: skip
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
