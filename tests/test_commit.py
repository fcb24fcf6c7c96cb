"""Commit stage: only the highest contiguous finished offset (+1) per partition is ever committed."""

from __future__ import annotations

from typing import Any

import pytest

from workers.contract.errors import KafkaOperationFailed
from workers.stages.commit import OffsetTracker, commit_offsets, commit_transaction

P0, P1 = ("in", 0), ("in", 1)


def test_position_advances_only_over_contiguous_finished_offsets() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 15):  # gaps (compaction, transaction markers) are fine
        tracker.track(P0, offset)
    tracker.finish(P0, 11)
    tracker.finish(P0, 15)
    assert tracker.committable() == {}
    tracker.finish(P0, 10)
    assert tracker.committable() == {P0: 12}
    tracker.finish(P0, 12)
    assert tracker.committable() == {P0: 16}
    assert tracker.unfinished() == 0


def test_partitions_are_independent_and_committed_positions_not_repeated() -> None:
    tracker = OffsetTracker()
    tracker.track(P0, 0)
    tracker.track(P1, 0)
    tracker.track(P1, 1)
    tracker.finish(P1, 1)
    tracker.finish(P0, 0)
    assert tracker.committable() == {P0: 1}
    assert tracker.unfinished([P1]) == 1
    tracker.mark_committed({P0: 1})
    assert tracker.committable() == {}
    tracker.finish(P1, 0)
    assert tracker.committable([P0, P1]) == {P1: 2}


def test_forgotten_partition_ignores_late_acks() -> None:
    tracker = OffsetTracker()
    tracker.track(P0, 5)
    tracker.forget([P0])
    tracker.finish(P0, 5)
    assert tracker.committable() == {} and tracker.unfinished() == 0


class RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[tuple[list[tuple[str, int, int]], bool]] = []

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))

    def consumer_group_metadata(self) -> str:
        return "group-metadata"


def test_commit_offsets_commits_positions_once() -> None:
    tracker, consumer = OffsetTracker(), RecordingConsumer()
    tracker.track(P0, 7)
    assert commit_offsets(consumer, tracker) == {}
    tracker.finish(P0, 7)
    assert commit_offsets(consumer, tracker, asynchronous=False) == {P0: 8}
    assert consumer.commits == [([("in", 0, 8)], False)]
    assert commit_offsets(consumer, tracker) == {}


class RecordingProducer:
    def __init__(self, unflushed: int = 0) -> None:
        self.calls: list[str] = []
        self.unflushed = unflushed

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return self.unflushed

    def send_offsets_to_transaction(self, positions: list[Any], group_metadata: Any, timeout: float) -> None:
        self.calls.append(f"send_offsets {[(tp.partition, tp.offset) for tp in positions]} {group_metadata}")

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit_transaction")

    def begin_transaction(self) -> None:
        self.calls.append("begin_transaction")


def test_transactional_commit_steps_in_order() -> None:
    tracker, producer = OffsetTracker(), RecordingProducer()
    tracker.track(P1, 3)
    tracker.finish(P1, 3)
    assert commit_transaction(producer, RecordingConsumer(), tracker) == {P1: 4}
    assert producer.calls == [
        "flush", "send_offsets [(1, 4)] group-metadata", "commit_transaction", "begin_transaction"
    ]


def test_transactional_commit_refuses_unfinished_work_and_unacknowledged_outputs() -> None:
    tracker = OffsetTracker()
    tracker.track(P0, 1)
    with pytest.raises(KafkaOperationFailed, match="unfinished"):
        commit_transaction(RecordingProducer(), RecordingConsumer(), tracker)
    tracker.finish(P0, 1)
    producer = RecordingProducer(unflushed=2)
    with pytest.raises(KafkaOperationFailed, match="not acknowledged"):
        commit_transaction(producer, RecordingConsumer(), tracker)
    assert "commit_transaction" not in producer.calls


def test_finish_many_is_finish_for_each_offset() -> None:
    one, many = OffsetTracker(), OffsetTracker()
    for tracker in (one, many):
        for offset in (3, 4, 5, 7, 8):
            tracker.track(("t", 0), offset)
    for offset in (5, 3, 8):
        one.finish(("t", 0), offset)
    many.finish_many(("t", 0), [5, 3, 8])
    many.finish_many(("gone", 1), [1])  # not tracked (revoked): ignored
    assert one.committable() == many.committable() == {("t", 0): 4}
    assert one.unfinished() == many.unfinished() == 2
