"""The control topic (`ENRICH_CONTROL_TOPIC`, default `enrich.control`, compacted): the model each consumer
group should run, and what each worker runs.

    key <group>                   desired model   {"model_dir", "digest", "name", "version",
                                                   "triton_version", "set_at", "set_by"}
    key worker/<group>/<id>       worker report   {"group", "worker_id", "digest", "name", "version",
                                                   "triton_version", "since", "swaps", "failed_swaps",
                                                   "last_error", "reported_at", "trial", "trial_error"}
    key candidate/<group>         shadow/canary   {"group", "mode", "fraction", "digest", "model_dir", "name",
                                                   "version", "triton_version", "set_at", "set_by"}
                                                   (a tombstone: no candidate; see `workers.rollout_trial`)

Compaction keeps the last record per key, so a reader that starts at the beginning knows the current
state after one pass. The readers here are consumers of no group: they assign every partition from the
beginning and never commit, so any number of them (every worker, `enrich rollout status`) read it all.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from workers.contract.errors import KafkaOperationFailed
from workers.runtime.kafka_security import client_config

__all__ = [
    "CandidateModel",
    "ControlReader",
    "ControlRecord",
    "ControlWriter",
    "DesiredModel",
    "ModelRecord",
    "WorkerReport",
    "candidate_key",
    "parse_record",
    "read_control",
    "utc_now",
    "worker_key",
]

log = logging.getLogger(__name__)

_WORKER_PREFIX = "worker/"
_CANDIDATE_PREFIX = "candidate/"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ModelRecord:
    """A model named on the control topic for a group. `model_dir` is where the setter found it; a worker
    that cannot see that path looks the digest up in its own `ENRICH_MODEL_STORE`."""

    group: str
    digest: str
    model_dir: str
    name: str
    version: str
    triton_version: str = ""
    set_at: str = ""
    set_by: str = ""


@dataclass(frozen=True)
class DesiredModel(ModelRecord):
    """What `enrich rollout set` asks a group to run."""

    @property
    def key(self) -> str:
        return self.group


@dataclass(frozen=True)
class WorkerReport:
    """What a worker runs, published at start, after every swap attempt and every ENRICH_CONTROL_REPORT_S."""

    group: str
    worker_id: str
    digest: str
    name: str
    version: str
    triton_version: str = ""
    since: str = ""
    swaps: int = 0
    failed_swaps: int = 0
    last_error: str = ""
    reported_at: str = ""
    trial: str = ""  # e.g. "canary sha256:aa19c9204ff5 0.05"; "" when none
    trial_error: str = ""

    @property
    def key(self) -> str:
        return worker_key(self.group, self.worker_id)


@dataclass(frozen=True)
class CandidateModel(ModelRecord):
    """A model tried next to the desired one (`enrich rollout shadow|canary`): `mode` "shadow" runs it on
    the `fraction` of listings sampled by listing_id hash and writes the comparison to the shadow topic;
    "canary" serves that fraction of listings with it. A worker ignores it while it is the desired model."""

    mode: str = "shadow"
    fraction: float = 0.0

    @property
    def key(self) -> str:
        return candidate_key(self.group)


ControlRecord = DesiredModel | WorkerReport | CandidateModel


def worker_key(group: str, worker_id: str) -> str:
    return f"{_WORKER_PREFIX}{group}/{worker_id}"


def candidate_key(group: str) -> str:
    return f"{_CANDIDATE_PREFIX}{group}"


def parse_record(key: bytes | None, value: bytes | None) -> tuple[str, ControlRecord | None] | None:
    """(key, record); record None for a tombstone. None for a record this version cannot read (logged)."""
    if key is None:
        return None
    text = key.decode("utf-8", "replace")
    if value is None:
        return text, None
    cls: type[DesiredModel] | type[WorkerReport] | type[CandidateModel] = (
        WorkerReport if text.startswith(_WORKER_PREFIX)
        else CandidateModel if text.startswith(_CANDIDATE_PREFIX) else DesiredModel
    )  # fmt: skip
    try:
        data = orjson.loads(value)
        names = {f.name for f in dataclasses.fields(cls)}
        return text, cls(**{k: v for k, v in data.items() if k in names})
    except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
        log.warning("unreadable control record %r: %r", text, exc)
        return None


class ControlReader:
    """Reads the whole control topic from the beginning, then follows it (blocking calls: run them in a
    thread from the event loop)."""

    def __init__(self, bootstrap: str, topic: str, properties: Mapping[str, str] | None = None) -> None:
        self.topic = topic
        self._consumer = Consumer(client_config(bootstrap, {
            "group.id": f"enrich-control-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "isolation.level": "read_committed", "enable.partition.eof": False,
        }, properties))  # fmt: skip
        self._partitions: list[int] = []

    def exists(self, timeout_s: float = 5.0) -> bool:
        """Whether the topic is there (topic auto-creation is off: the services or the operator create it)."""
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        except KafkaException as exc:
            log.warning("control topic %s: metadata request failed: %r", self.topic, exc)
            return False
        return metadata is not None and metadata.error is None and bool(metadata.partitions)

    def start(self) -> None:
        """Assign every partition from the beginning (no group: nothing is committed)."""
        metadata = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        self._partitions = sorted(metadata.partitions)
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._partitions])

    def poll(self, timeout_s: float) -> list[tuple[str, ControlRecord | None]]:
        """The records that arrived (at most 500), in order; [] after `timeout_s` without any."""
        records = []
        for msg in self._consumer.consume(500, timeout_s):
            if msg.error() is not None:
                log.warning("control topic %s: %s", self.topic, msg.error())
                continue
            parsed = parse_record(msg.key(), msg.value())
            if parsed is not None:
                records.append(parsed)
        return records

    def end_reached(self, ends: dict[int, int]) -> bool:
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in self._partitions])
        return all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions)

    def read_all(self, timeout_s: float = 15.0) -> dict[str, ControlRecord]:
        """The current state: the last record per key, up to the end offsets as of this call."""
        self.start()
        ends = {
            p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            for p in self._partitions
        }
        state: dict[str, ControlRecord] = {}
        deadline = time.monotonic() + timeout_s
        while not self.end_reached(ends):
            if time.monotonic() > deadline:
                raise KafkaOperationFailed("read control topic", f"{self.topic}: end not reached in time")
            for key, record in self.poll(0.5):
                if record is None:
                    state.pop(key, None)
                else:
                    state[key] = record
        return state

    def close(self) -> None:
        self._consumer.close()


def read_control(bootstrap: str, topic: str, timeout_s: float = 15.0) -> dict[str, ControlRecord]:
    """The last record per key of the control topic."""
    reader = ControlReader(bootstrap, topic)
    try:
        if not reader.exists():
            raise KafkaOperationFailed(
                "read control topic", f"{topic} does not exist: create it (compacted), e.g. "
                "`enrich services up` or kafka-topics.sh --create --config cleanup.policy=compact",
            )  # fmt: skip
        return reader.read_all(timeout_s)
    finally:
        reader.close()


class ControlWriter:
    """Produces control records (JSON, keyed). Its own plain producer: the worker's output producer may be
    transactional (exactly-once), and a report is not part of any transaction."""

    def __init__(self, bootstrap: str, topic: str, properties: Mapping[str, str] | None = None) -> None:
        self.topic = topic
        self._producer = Producer(client_config(bootstrap, {"linger.ms": 5, "acks": "all"}, properties))
        self._errors: list[str] = []

    def send(self, record: ControlRecord) -> None:
        """Queue the record (non-blocking); `flush` waits for it."""
        value = orjson.dumps(dataclasses.asdict(record))
        self._producer.produce(self.topic, value=value, key=record.key.encode(), on_delivery=self._delivered)
        self._producer.poll(0)

    def delete(self, key: str) -> None:
        """Queue a tombstone for `key` (compaction then forgets the key)."""
        self._producer.produce(self.topic, value=None, key=key.encode(), on_delivery=self._delivered)
        self._producer.poll(0)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
            log.warning("control record not delivered to %s: %s", self.topic, err)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait for every queued record; KafkaOperationFailed if one was not acknowledged."""
        if self._producer.flush(timeout_s) != 0 or self._errors:
            errors, self._errors = self._errors, []
            raise KafkaOperationFailed("write control record", "; ".join(errors) or "not acknowledged")

    def close(self) -> None:
        self._producer.flush(2.0)


def default_setter() -> str:
    """Who sets a rollout: user@host, for `set_by`."""
    return f"{os.environ.get('USER', 'unknown')}@{os.uname().nodename}"
