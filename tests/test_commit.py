"""Commit stage: only the highest contiguous finished offset (+1) per partition is ever committed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from workers.contract.errors import KafkaOperationFailed
from workers.stages.commit import (
    AtLeastOnceCommits,
    ExactlyOnceCommits,
    OffsetTracker,
    commit_offsets,
    commit_transaction,
    make_commit_policy,
)

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

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init_transactions")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort_transaction")


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


class RecordingSettle:
    """The stream loop's settle step: records its scope and finishes what `finishes` names."""

    def __init__(self, tracker: OffsetTracker, finishes: list[tuple[tuple[str, int], int]]) -> None:
        self.tracker, self.finishes, self.scopes = tracker, finishes, []

    async def __call__(self, partitions: list[tuple[str, int]] | None) -> None:
        self.scopes.append(partitions)
        for tp, offset in self.finishes:
            self.tracker.finish(tp, offset)


def test_the_configuration_picks_the_policy() -> None:
    consumer, producer, tracker = RecordingConsumer(), RecordingProducer(), OffsetTracker()
    pick = make_commit_policy
    assert isinstance(pick(exactly_once=False, consumer=consumer, producer=producer, tracker=tracker),
                      AtLeastOnceCommits)  # fmt: skip
    assert isinstance(pick(exactly_once=True, consumer=consumer, producer=producer, tracker=tracker),
                      ExactlyOnceCommits)  # fmt: skip


def test_at_least_once_commits_on_tick_drain_and_close() -> None:
    tracker, consumer = OffsetTracker(), RecordingConsumer()
    commits = AtLeastOnceCommits(consumer, tracker)
    for tp in (P0, P1):
        tracker.track(tp, 5)
    tracker.finish(P0, 5)

    async def scenario() -> None:
        await commits.begin()
        await commits.tick(RecordingSettle(tracker, []))  # asynchronous, finished work only
        settle = RecordingSettle(tracker, [(P1, 5)])
        await commits.drain([P1], settle)  # revoke: settle that partition, commit it synchronously
        assert settle.scopes == [[P1]]
        assert tracker.unfinished([P1]) == 0 and tracker.committable([P1]) == {}  # forgotten
        tracker.track(P0, 6)
        tracker.finish(P0, 6)
        await commits.close(failed=True)  # acknowledged work is committable even after a failure

    asyncio.run(scenario())
    assert consumer.commits == [([("in", 0, 6)], True), ([("in", 1, 6)], False), ([("in", 0, 7)], False)]


def test_exactly_once_settles_everything_before_each_transaction_commit() -> None:
    tracker, consumer, producer = OffsetTracker(), RecordingConsumer(), RecordingProducer()
    commits = ExactlyOnceCommits(consumer, producer, tracker)

    async def scenario() -> None:
        await commits.begin()
        await commits.tick(RecordingSettle(tracker, []))  # nothing consumed: no transaction commit
        tracker.track(P0, 1)
        await commits.tick(RecordingSettle(tracker, []))  # did not settle in time: postponed
        assert "commit_transaction" not in producer.calls
        settle = RecordingSettle(tracker, [(P0, 1)])
        await commits.drain([P0], settle)  # the transaction spans every partition: settle all
        assert settle.scopes == [None]
        await commits.close(failed=False)

    asyncio.run(scenario())
    assert producer.calls == [
        "init_transactions", "begin_transaction",
        "flush", "send_offsets [(0, 2)] group-metadata", "commit_transaction", "begin_transaction",
        "flush", "commit_transaction",  # the last one at close: nothing new to send, no next transaction
    ]  # fmt: skip


def test_exactly_once_aborts_when_closing_failed_or_unfinished() -> None:
    for failed, unfinished in ((True, False), (False, True)):
        tracker, producer = OffsetTracker(), RecordingProducer()
        if unfinished:
            tracker.track(P0, 1)
        asyncio.run(ExactlyOnceCommits(RecordingConsumer(), producer, tracker).close(failed=failed))
        assert producer.calls == ["abort_transaction"]
