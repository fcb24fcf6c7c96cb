"""Accounting: read the output and dead-letter topics and match every record to the input it came from.

Every produced input record is identified by its (partition, offset). An attribute event names its
listing_id (unique per produced listing); a dead-letter record names its source partition and offset.
Lost = produced records with neither; duplicates = records beyond the first for the same input, bounded
by `InFlightWindow` per fault that may re-deliver (0 where the ledger reads read_committed); a record the
harness failed to produce is counted as such (`produce_failed`), never left out of the input count.
"""

from __future__ import annotations

import bisect
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from devtools.harness.listings import OUTPUT, Expected
from workers.runtime.kafka_security import client_config

__all__ = ["Fault", "InFlightWindow", "Ledger", "Tally", "count_outcomes"]


@dataclass
class Tally:
    """The figures of one scenario's outcome. `events_in` counts every record the harness tried to produce;
    `produce_failed` of them were never acknowledged by the broker (no position, so no outcome to expect):
    they make the scenario fail rather than silently shrink the input."""

    events_in: int
    attribute_events: int
    dlq: int
    lost: int
    duplicates: int
    wrong_outcome: int
    unknown: int
    dlq_codes: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)
    produce_failed: int = 0


class Ledger:
    """One consumer assigned to every partition of the output and DLQ topics, read incrementally."""

    def __init__(self, bootstrap: str, input_topic: str, output_topic: str, dlq_topic: str,
                 *, read_committed: bool = False) -> None:  # fmt: skip
        self.input_topic = input_topic
        self.outputs: Counter[str] = Counter()  # listing_id -> attribute events
        self.dead: Counter[tuple[int, int]] = Counter()  # input (partition, offset) -> DLQ records
        self.dead_codes: dict[tuple[int, int], list[str]] = {}
        self.output_times: list[float] = []  # broker append time (s) of every attribute event
        self.cache_hits = 0  # attribute events served from the result cache (the rest were inferred)
        self.foreign_dlq = 0  # DLQ records naming another topic (none expected)
        # Sees every attribute event with its append time (s): a scenario's own checks (model-swap).
        self.on_output: Callable[[dict[str, Any], float], None] | None = None
        self._output_topic, self._dlq_topic = output_topic, dlq_topic
        self._consumer = Consumer(client_config(bootstrap, {
            "group.id": f"chaos-ledger-{time.time_ns()}", "enable.auto.commit": False, "log_level": 3,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }))  # fmt: skip
        partitions = []
        for topic in (output_topic, dlq_topic):
            metadata = self._consumer.list_topics(topic, timeout=30).topics[topic]
            partitions += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        self._partitions = partitions
        self._consumer.assign(partitions)

    def poll(self, seconds: float) -> int:
        """Read what arrives within `seconds`; returns the number of records read."""
        deadline = time.monotonic() + seconds
        read = 0
        while True:
            remaining = deadline - time.monotonic()
            messages = self._consumer.consume(1000, max(0.0, min(remaining, 0.2)))
            for msg in messages:
                if msg.error() is None:
                    self._count(msg.topic(), msg.value(), msg.timestamp()[1])
                    read += 1
            if remaining <= 0 or (not messages and read):
                return read

    def _count(self, topic: str, value: bytes, timestamp_ms: int) -> None:
        event = orjson.loads(value)
        if topic == self._output_topic:
            self.outputs[event["listing_id"]] += 1
            self.output_times.append(timestamp_ms / 1000)
            self.cache_hits += event.get("cache_hit") is True
            if self.on_output is not None:
                self.on_output(event, timestamp_ms / 1000)
            return
        source = event["source"]
        if source["topic"] != self.input_topic:
            self.foreign_dlq += 1
            return
        position = (source["partition"], source["offset"])
        self.dead[position] += 1
        self.dead_codes.setdefault(position, []).append(event["error"]["code"])

    def read_to_end(self, timeout_s: float = 120) -> None:
        """Read until the consumer's position reaches the end of every partition."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll(0.5)
            if all(self._at_end(tp) for tp in self._consumer.position(self._partitions)):
                return
        raise TimeoutError(f"topics not read to the end within {timeout_s} s")

    def _at_end(self, tp: TopicPartition) -> bool:
        low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        position = tp.offset if tp.offset >= 0 else low  # nothing read yet: at the log start
        return position >= high

    def accounted(self, placed: Mapping[tuple[int, int], Expected]) -> int:
        """Produced records that have an outcome (attribute event or DLQ record) so far."""
        return sum(
            1 for position, expected in placed.items()
            if self.dead[position] or (OUTPUT in expected.outcomes and self.outputs[expected.label])
        )  # fmt: skip

    def first_output_after(self, moment: float) -> float | None:
        """Broker append time of the first attribute event appended at or after `moment` (wall clock)."""
        later = [t for t in self.output_times if t >= moment]
        return min(later) if later else None

    def tally(self, placed: Mapping[tuple[int, int], Expected], *, produce_failed: int = 0) -> Tally:
        return count_outcomes(placed, self.outputs, self.dead_codes, foreign_dlq=self.foreign_dlq,
                              produce_failed=produce_failed)  # fmt: skip

    def close(self) -> None:
        self._consumer.close()


def count_outcomes(placed: Mapping[tuple[int, int], Expected], outputs: Mapping[str, int],
                   dead_codes: Mapping[tuple[int, int], list[str]], *, foreign_dlq: int = 0,
                   produce_failed: int = 0) -> Tally:  # fmt: skip
    """Match outcomes to inputs. `placed`: input (partition, offset) -> expectation; `outputs`: attribute
    events per listing_id; `dead_codes`: the DLQ reason codes recorded per input position;
    `produce_failed`: records the harness tried to produce that the broker never acknowledged."""
    labels = {expected.label for expected in placed.values() if OUTPUT in expected.outcomes}
    lost, duplicates, wrong = [], 0, []
    for position, expected in placed.items():
        produced = outputs.get(expected.label, 0) if expected.label in labels else 0
        codes = dead_codes.get(position, [])
        if produced + len(codes) == 0:
            lost.append(expected.label)
            continue
        duplicates += produced + len(codes) - 1
        outcomes = ({OUTPUT} if produced else set()) | {f"dlq:{code}" for code in codes}
        if not outcomes <= expected.outcomes:
            wrong.append(f"{expected.label} ({expected.kind}): got {sorted(outcomes)}")
    unknown = sum(n for label, n in outputs.items() if label not in labels)
    unknown += sum(len(codes) for position, codes in dead_codes.items() if position not in placed)
    return Tally(
        events_in=len(placed) + produce_failed, attribute_events=sum(outputs.values()),
        dlq=sum(len(codes) for codes in dead_codes.values()) + foreign_dlq, lost=len(lost),
        duplicates=duplicates, wrong_outcome=len(wrong), unknown=unknown + foreign_dlq,
        dlq_codes=dict(Counter(code for codes in dead_codes.values() for code in codes)),
        lost_examples=lost[:10], wrong_examples=wrong[:10], produce_failed=produce_failed,
    )  # fmt: skip


Fault = tuple[float, float]  # (start, end), wall clock in s; a kill -9 starts and ends at once


@dataclass(frozen=True)
class InFlightWindow:
    """What one fault (a kill -9, a broker lost) may re-deliver at most under the worker's settings,
    at-least-once: offsets past the last commit that already had their output.

    Each such record either finished after the last commit before the fault (its attribute event was
    appended within `since_commit_s` before the fault starts, or during the fault, while commits fail or
    the partitions are about to be lost), or was still unfinished when the partitions went: at most
    `max_pending`, plus one consume() of up to `consume_max_messages` that may overshoot it, plus the
    single-record consumes that keep the group alive while the window is full (`SLOP`). The finished part
    is the worker's throughput, which no setting bounds, so it is read off the broker's append times.
    A worker that never commits re-delivers everything it did before each fault, far beyond this.
    """

    max_pending: int
    consume_max_messages: int
    commit_interval_ms: int

    # After the interval: one intake turn (a consume() waits at most 0.1 s) before the commit tick, the
    # asynchronous commit's round trip, and a batch holding back the committable position meanwhile.
    COMMIT_SLACK_S = 0.5
    SLOP = 10

    @classmethod
    def of_worker(cls, env: Mapping[str, str]) -> InFlightWindow:
        """The window of a worker started with `env` over this process's environment (as WorkerProcess)."""
        from workers.runtime.config import load_config

        config = load_config(None, env={**os.environ, **env})
        kafka = config.kafka
        return cls(config.batch.max_pending, kafka.consume_max_messages, kafka.commit_interval_ms)

    @property
    def since_commit_s(self) -> float:
        return self.commit_interval_ms / 1000 + self.COMMIT_SLACK_S

    def at(self, fault: Fault, output_times: Sequence[float]) -> int:
        """The most one fault may re-deliver; `output_times`: broker append times (s), sorted."""
        start, end = fault
        finished = bisect.bisect_right(output_times, end) - bisect.bisect_left(
            output_times, start - self.since_commit_s
        )
        return self.max_pending + self.consume_max_messages + self.SLOP + finished

    def per_fault(self, faults: Sequence[Fault], output_times: Sequence[float]) -> list[int]:
        """The window of each fault; a run with these faults may show their sum of duplicates."""
        ordered = sorted(output_times)
        return [self.at(fault, ordered) for fault in faults]
