"""`enrich dlq redrive`: re-publish dead letters to their input topic once the cause is fixed.

A dead letter keeps the original bytes (workers/contract/events.py) unless they were cut to fit one Kafka
message; then, and when its key was cut, the original is read from the input topic at the recorded
partition/offset (gone when retention deleted it: skipped and counted). Each re-published record carries
the header `enrich-redrive-attempt` = attempts so far + 1; the dead-letter writer copies it into the dead
letter (`redrive_attempt`) when the record fails again, so a record that can never pass stops at
`--max-attempts` instead of going round forever.

The reader is its own consumer group (`enrich-redrive.<reason or all>` unless `--group`), reads each DLQ
partition from its committed offset up to the end as it was when the run started (records dead-lettered
during the run wait for the next one), and commits a chunk only after every record it re-published was
acknowledged: a rerun never redrives a record twice, a crash in between at most once more. A record the
filters skip is committed past too: one group per filter (the default name) keeps them apart; a run
without `--reason` after one with it reads what the other group already handled. `--dry-run` produces
and commits nothing.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from workers.contract.errors import ConfigError, KafkaOperationFailed
from workers.contract.events import REDRIVE_ATTEMPT_HEADER
from workers.runtime.kafka_security import client_config
from workers.runtime.topic_range import read_to_end

__all__ = ["RedriveCounts", "RedriveOptions", "parse_since", "redrive"]

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class RedriveOptions:
    bootstrap: str
    dlq_topic: str = "listings.dlq"
    reason: str | None = None
    since: datetime | None = None
    dry_run: bool = False
    max_attempts: int = 3
    group: str | None = None
    to_topic: str | None = None  # default: the topic the record came from
    timeout_s: float = 60.0

    @property
    def group_id(self) -> str:
        return self.group or f"enrich-redrive.{self.reason or 'all'}"


@dataclass
class RedriveCounts:
    read: int = 0
    redriven: int = 0
    from_payload: int = 0
    from_source: int = 0
    skipped_attempts: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why: other_reason, before_since, ...
    redriven_by_code: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "redriven": self.redriven, "from_payload": self.from_payload,
                "from_source": self.from_source, "skipped_attempts": self.skipped_attempts,
                "skipped": dict(self.skipped), "redriven_by_code": dict(self.redriven_by_code)}  # fmt: skip


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time (`2026-11-29T07:00:00Z`) or an age (`30m`, `2h`, `7d`) before ``now``."""
    match = _RELATIVE.match(text.strip())
    if match:
        age = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return (now or datetime.now(UTC)) - age
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--since {text!r}: expected an RFC 3339 time or an age like 30m, 2h, 7d") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Original:
    topic: str
    key: bytes | None
    value: bytes
    attempt: int = 0  # the redrive attempt it is published as


def _decode(text: str | None, encoding: str | None) -> bytes | None:
    if text is None:
        return None
    return base64.b64decode(text) if encoding == "base64" else text.encode("utf-8")


class _SourceReader:
    """Reads single records of the input topic by partition and offset (an assign-only consumer)."""

    def __init__(self, bootstrap: str, group: str, timeout_s: float) -> None:
        self._consumer = Consumer(client_config(bootstrap, {
            "group.id": f"{group}.source", "enable.auto.commit": False,
            "enable.partition.eof": True, "isolation.level": "read_committed",
        }))  # fmt: skip
        self._timeout_s = timeout_s

    def read(self, topic: str, partition: int, offset: int) -> Message | None:
        """The record at ``offset``, or None when it is gone (retention) or was never committed."""
        tp = TopicPartition(topic, partition, offset)
        low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
        if not low <= offset < high:
            return None
        self._consumer.assign([tp])
        try:
            while True:
                msg = self._consumer.poll(self._timeout_s)
                if msg is None:
                    raise KafkaOperationFailed("redrive source read", f"{tp.topic}[{partition}]@{offset}")
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return None  # an aborted transaction's record: nothing was ever consumed there
                    raise KafkaOperationFailed("redrive source read", str(error))
                if msg.offset() >= offset:
                    return msg if msg.offset() == offset else None
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


class _Redriver:
    def __init__(self, options: RedriveOptions) -> None:
        self.options, self.counts = options, RedriveCounts()
        self._source: _SourceReader | None = None

    def decide(self, value: bytes | None) -> tuple[str | None, int]:
        """Why the dead letter is skipped (None: redrive it) and its attempts so far."""
        options = self.options
        try:
            letter = orjson.loads(value or b"")
            code, attempts = letter["error"]["code"], int(letter.get("redrive_attempt") or 0)
            failed_at = datetime.fromisoformat(letter["failed_at"].replace("Z", "+00:00"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return "unreadable", 0
        if options.reason is not None and code != options.reason:
            return "other_reason", attempts
        if options.since is not None and failed_at < options.since:
            return "before_since", attempts
        if attempts >= options.max_attempts:
            return "attempts", attempts
        return None, attempts

    def original(self, letter: dict[str, Any]) -> _Original | None:
        """The original key and value: from the dead letter when it kept them whole, else from the source."""
        source = letter["source"]
        topic = self.options.to_topic or source["topic"]
        if letter.get("payload") is None and not letter.get("payload_truncated"):
            return None  # a tombstone: nothing to process, on the source either
        complete = letter.get("payload") is not None and not letter.get("payload_truncated")
        if complete and not source.get("key_truncated"):
            self.counts.from_payload += 1
            key = _decode(source.get("key"), source.get("key_encoding"))
            return _Original(topic, key, _decode(letter["payload"], letter.get("payload_encoding")) or b"")
        if self._source is None:
            options = self.options
            self._source = _SourceReader(options.bootstrap, options.group_id, min(options.timeout_s, 10.0))
        msg = self._source.read(source["topic"], int(source["partition"]), int(source["offset"]))
        if msg is None or msg.value() is None:
            return None
        self.counts.from_source += 1
        return _Original(topic, msg.key(), msg.value())

    def handle(self, msg: Message) -> _Original | None:
        """What to re-publish for one dead letter (None: skipped, counted), with its attempt header."""
        self.counts.read += 1
        why, attempts = self.decide(msg.value())
        if why == "attempts":
            self.counts.skipped_attempts += 1
            return None
        if why is not None:
            self.counts.skipped[why] += 1
            return None
        letter = orjson.loads(msg.value())
        found = self.original(letter)
        if found is None:
            self.counts.skipped["no_payload" if letter.get("payload") is None else "source_gone"] += 1
            return None
        self.counts.redriven += 1
        self.counts.redriven_by_code[letter["error"]["code"]] += 1
        return _Original(found.topic, found.key, found.value, attempts + 1)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()


def _end_offsets(consumer: Consumer, topic: str, timeout_s: float) -> dict[TopicPartition, int]:
    """Where to start (committed, else the oldest) per partition that has anything left, and where to stop."""
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise ConfigError(f"dead-letter topic {topic!r} not found: set --topic / ENRICH_DLQ_TOPIC")
    partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    plan: dict[TopicPartition, int] = {}
    for committed in consumer.committed(partitions, timeout=timeout_s):
        low, high = consumer.get_watermark_offsets(committed, timeout=timeout_s)
        start = committed.offset if committed.offset >= 0 else low
        if start < high:
            plan[TopicPartition(topic, committed.partition, start)] = high
    return plan


def redrive(options: RedriveOptions) -> RedriveCounts:
    """Read the DLQ from the group's position to the current end, re-publish what passes the filters."""
    if options.max_attempts < 1:
        raise ConfigError(f"--max-attempts must be >= 1, got {options.max_attempts}")
    consumer = Consumer(client_config(options.bootstrap, {
        "group.id": options.group_id, "enable.auto.commit": False,
        "enable.partition.eof": True, "isolation.level": "read_committed", "auto.offset.reset": "earliest",
    }))  # fmt: skip
    producer = Producer(client_config(options.bootstrap, {"enable.idempotence": True, "linger.ms": 5}))
    redriver = _Redriver(options)
    try:
        plan = _end_offsets(consumer, options.dlq_topic, options.timeout_s)
        ends = {tp.partition: high for tp, high in plan.items()}
        if plan:
            consumer.assign(list(plan))
        for chunk in read_to_end(consumer, ends, "redrive read", options.timeout_s):
            done: dict[int, int] = {}  # partition -> next offset, for the records handled in this chunk
            outgoing: list[_Original] = []
            for msg in chunk:
                if (found := redriver.handle(msg)) is not None:
                    outgoing.append(found)
                done[msg.partition()] = msg.offset() + 1
            _publish(producer, outgoing, options, consumer, done)
    finally:
        redriver.close()
        consumer.close()
    return redriver.counts


def _publish(
    producer: Producer, outgoing: list[_Original], options: RedriveOptions, consumer: Consumer,
    done: dict[int, int],
) -> None:
    """Produce the chunk's records, wait for every acknowledgement, then commit past the chunk."""
    if options.dry_run or not done:
        return
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    for item in outgoing:
        header = [(REDRIVE_ATTEMPT_HEADER, str(item.attempt).encode())]
        producer.produce(item.topic, item.value, item.key, headers=header, on_delivery=delivered)
        producer.poll(0)
    if producer.flush(options.timeout_s) or failures:
        raise KafkaOperationFailed("redrive produce", f"not acknowledged: {failures or 'timed out'}")
    offsets = [TopicPartition(options.dlq_topic, p, offset) for p, offset in done.items()]
    consumer.commit(offsets=offsets, asynchronous=False)
