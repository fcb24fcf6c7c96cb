"""Commit stage: only the highest contiguous finished offset (+1) per partition is ever committed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from workers.contract.errors import DeliveryFailed, KafkaOperationFailed
from workers.stages.commit import (
    CallHung,
    OffsetTracker,
    commit_offsets,
    commit_reporter,
    commit_transaction,
)
from workers.stages.commit_policy import AtLeastOnceCommits, ExactlyOnceCommits, make_commit_policy

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
        "flush",
        "send_offsets [(1, 4)] group-metadata",
        "commit_transaction",
        "begin_transaction",
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


def test_an_asynchronous_commit_counts_only_once_confirmed_and_a_failed_one_is_committed_again() -> None:
    tracker, consumer = OffsetTracker(), RecordingConsumer()
    report = commit_reporter(tracker)  # the consumer's on_commit callback
    tracker.track(P0, 0)
    tracker.finish(P0, 0)
    assert commit_offsets(consumer, tracker) == {P0: 1}  # sent; no answer yet
    assert commit_offsets(consumer, tracker) == {}  # not sent twice while the answer is pending
    report(KafkaError(KafkaError.REQUEST_TIMED_OUT), [TopicPartition("in", 0, 1)])  # the broker says no
    assert commit_offsets(consumer, tracker) == {P0: 1}  # so it is committed again
    report(None, [TopicPartition("in", 0, 1)])
    assert commit_offsets(consumer, tracker) == {}
    assert [offsets for offsets, _ in consumer.commits] == [[("in", 0, 1)], [("in", 0, 1)]]


def test_a_late_failure_of_an_older_commit_does_not_undo_a_newer_one() -> None:
    tracker, consumer = OffsetTracker(), RecordingConsumer()
    report = commit_reporter(tracker)
    for offset in (0, 1):
        tracker.track(P0, offset)
    tracker.finish(P0, 0)
    commit_offsets(consumer, tracker)  # position 1, sent
    tracker.finish(P0, 1)
    commit_offsets(consumer, tracker)  # position 2, sent
    report(KafkaError(KafkaError.REQUEST_TIMED_OUT), [TopicPartition("in", 0, 1)])  # superseded by 2
    assert tracker.committable() == {}
    report(None, [TopicPartition("in", 0, 2)])
    tracker.track(P1, 0)
    tracker.finish(P1, 0)
    # A synchronous commit (revoke, shutdown) re-sends what is sent but unconfirmed, not what is confirmed.
    commit_offsets(consumer, tracker, asynchronous=False)
    assert consumer.commits[-1] == ([("in", 1, 1)], False)


def test_a_sync_commit_resends_a_position_whose_async_commit_is_unanswered() -> None:
    tracker, consumer = OffsetTracker(), RecordingConsumer()
    tracker.track(P0, 4)
    tracker.finish(P0, 4)
    commit_offsets(consumer, tracker)
    assert commit_offsets(consumer, tracker, asynchronous=False) == {P0: 5}


def test_reset_drops_every_partition_and_ignores_finishes_of_the_old_epoch() -> None:
    tracker = OffsetTracker()
    tracker.track(P0, 3)
    old = tracker.epoch
    tracker.reset()
    assert tracker.epoch != old and tracker.unfinished() == 0 and tracker.committable() == {}
    tracker.track(P0, 3)  # read again after the rewind
    tracker.finish(P0, 3, old)  # a late ack of the aborted output
    assert tracker.unfinished() == 1 and tracker.committable() == {}
    tracker.finish(P0, 3, tracker.epoch)
    assert tracker.committable() == {P0: 4}


class FailingProducer(RecordingProducer):
    """Fails `fail_call` once with `error` (a KafkaError code)."""

    def __init__(self, fail_call: str, error: KafkaError) -> None:
        super().__init__()
        self.fail_call, self.error = fail_call, error

    def send_offsets_to_transaction(self, positions: list[Any], group_metadata: Any, timeout: float) -> None:
        super().send_offsets_to_transaction(positions, group_metadata, timeout)
        if self.fail_call == "send_offsets":
            self.fail_call = ""
            raise KafkaException(self.error)


def test_exactly_once_lost_partitions_abort_the_transaction_and_drop_all_in_flight_work() -> None:
    tracker, producer = OffsetTracker(), RecordingProducer()
    commits = ExactlyOnceCommits(RecordingConsumer(), producer, tracker)
    epoch = tracker.epoch

    async def scenario() -> None:
        await commits.begin()
        for tp in (P0, P1):  # outputs of both partitions are in the open transaction
            tracker.track(tp, 7)
            tracker.finish(tp, 7)
        tracker.track(P1, 8)  # in flight
        await commits.lost([P0])
        # P1 is kept, but its output was aborted too: its state is gone, a late ack finishes nothing, and
        # the loop reads it again from the committed offset (the epoch changed).
        tracker.finish(P1, 8, epoch)
        assert tracker.epoch != epoch and tracker.committable() == {} and tracker.unfinished() == 0
        await commits.tick(RecordingSettle(tracker, []))  # nothing to commit in the new transaction

    asyncio.run(scenario())
    assert producer.calls == [
        "init_transactions", "begin_transaction", "abort_transaction", "begin_transaction"
    ]  # fmt: skip


def test_exactly_once_starts_over_when_a_commit_fails_abortably_and_stops_on_any_other_failure() -> None:
    abortable = KafkaError(KafkaError.UNKNOWN_MEMBER_ID, txn_requires_abort=True)  # zombie: stale generation
    tracker, producer = OffsetTracker(), FailingProducer("send_offsets", abortable)
    commits = ExactlyOnceCommits(RecordingConsumer(), producer, tracker)
    tracker.track(P0, 1)
    tracker.finish(P0, 1)
    epoch = tracker.epoch
    asyncio.run(commits.tick(RecordingSettle(tracker, [])))
    assert producer.calls == [
        "flush", "send_offsets [(0, 2)] group-metadata", "abort_transaction", "begin_transaction"
    ]  # fmt: skip
    assert tracker.epoch != epoch and tracker.committable() == {}

    fatal = KafkaError(KafkaError._FENCED, fatal=True)
    tracker, producer = OffsetTracker(), FailingProducer("send_offsets", fatal)
    tracker.track(P0, 1)
    tracker.finish(P0, 1)
    commits = ExactlyOnceCommits(RecordingConsumer(), producer, tracker)
    with pytest.raises(KafkaOperationFailed):
        asyncio.run(commits.tick(RecordingSettle(tracker, [])))
    assert "abort_transaction" not in producer.calls


def test_at_least_once_lost_partitions_are_only_forgotten() -> None:
    tracker, consumer = OffsetTracker(), RecordingConsumer()
    for tp in (P0, P1):
        tracker.track(tp, 2)
        tracker.finish(tp, 2)
    epoch = tracker.epoch
    asyncio.run(AtLeastOnceCommits(consumer, tracker).lost([P0]))
    # The new owner re-processes P0 from its last commit (duplicates, never a loss); P1 is untouched.
    assert tracker.epoch == epoch and tracker.committable() == {P1: 3} and consumer.commits == []


class BrokenProducer(RecordingProducer):
    """librdkafka's fatal state: once `error` happened, every transactional call fails with it."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__()
        self.error = error

    def send_offsets_to_transaction(self, positions: list[Any], group_metadata: Any, timeout: float) -> None:
        super().send_offsets_to_transaction(positions, group_metadata, timeout)
        raise KafkaException(self.error)

    def abort_transaction(self, timeout: float) -> None:
        super().abort_transaction(timeout)
        raise KafkaException(self.error)

    def begin_transaction(self) -> None:
        if "abort_transaction" in self.calls:
            super().begin_transaction()
            raise KafkaException(self.error)


def _one_finished_offset() -> OffsetTracker:
    tracker = OffsetTracker()
    tracker.track(P0, 1)
    tracker.finish(P0, 1)
    return tracker


def test_exactly_once_replaces_a_producer_left_fatal_by_a_broker_failover() -> None:
    # Seen in the exactly-once-failover scenario: after the output partition's leader moved, the woken
    # worker's producer failed fatally with OUT_OF_ORDER_SEQUENCE_NUMBER; the worker used to exit.
    fatal = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True)
    tracker, broken, fresh = _one_finished_offset(), BrokenProducer(fatal), RecordingProducer()
    commits = ExactlyOnceCommits(RecordingConsumer(), broken, tracker, renew=lambda: fresh)
    epoch = tracker.epoch
    asyncio.run(commits.tick(RecordingSettle(tracker, [])))
    assert broken.calls[-2:] == ["abort_transaction", "begin_transaction"]
    assert fresh.calls == ["init_transactions", "begin_transaction"]
    # Nothing of the aborted transaction finishes or commits; its input is read again.
    assert tracker.epoch != epoch and tracker.committable() == {} and tracker.unfinished() == 0


def test_exactly_once_recovers_from_a_failed_delivery_by_aborting_and_reading_again() -> None:
    tracker, producer = _one_finished_offset(), RecordingProducer()
    commits = ExactlyOnceCommits(RecordingConsumer(), producer, tracker, renew=lambda: RecordingProducer())
    failure = DeliveryFailed("out", b"k", "Local: Message timed out")
    assert asyncio.run(commits.recover(failure)) is True
    assert producer.calls == ["abort_transaction", "begin_transaction"] and tracker.committable() == {}


def test_a_fenced_producer_or_too_many_recoveries_stop_the_worker() -> None:
    fenced = DeliveryFailed("out", b"k", "fenced", fatal=True, fenced=True)
    commits = ExactlyOnceCommits(RecordingConsumer(), RecordingProducer(), OffsetTracker())
    assert asyncio.run(commits.recover(fenced)) is False  # another instance owns the transactional id

    # A fatal state found on the probe that turns out fenced is not renewed either.
    tracker, broken = _one_finished_offset(), BrokenProducer(KafkaError(KafkaError._FENCED, fatal=True))
    commits = ExactlyOnceCommits(RecordingConsumer(), broken, tracker, renew=lambda: RecordingProducer())
    with pytest.raises(KafkaOperationFailed) as raised:
        asyncio.run(commits.recover(DeliveryFailed("out", None, "fatal", fatal=True)))
    assert raised.value.fenced

    commits = ExactlyOnceCommits(RecordingConsumer(), RecordingProducer(), OffsetTracker())
    timed_out = DeliveryFailed("out", None, "Local: Message timed out")
    assert [asyncio.run(commits.recover(timed_out)) for _ in range(4)] == [True, True, True, False]
    assert asyncio.run(AtLeastOnceCommits(RecordingConsumer(), OffsetTracker()).recover(timed_out)) is False


class HangingProducer(RecordingProducer):
    """librdkafka #5456: send_offsets_to_transaction ignores its timeout while the cached group coordinator
    is down (seen: 5 minutes in the exactly-once-failover test)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def send_offsets_to_transaction(self, positions: list[Any], group_metadata: Any, timeout: float) -> None:
        super().send_offsets_to_transaction(positions, group_metadata, timeout)
        self.released.wait(30)  # past the call's own bound (it ignores its timeout)


def test_a_send_offsets_call_that_ignores_its_timeout_is_left_behind_as_hung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.stages.commit.SEND_OFFSETS_TIMEOUT_S", 0.1)
    monkeypatch.setattr("workers.stages.commit._HANG_GRACE_S", 0.1)
    tracker, hanging, fresh = _one_finished_offset(), HangingProducer(), RecordingProducer()
    commits = ExactlyOnceCommits(RecordingConsumer(), hanging, tracker, renew=lambda: fresh)
    try:
        with pytest.raises(CallHung, match="send_offsets_to_transaction still running"):
            commit_transaction(hanging, RecordingConsumer(), _one_finished_offset())
        asyncio.run(commits.tick(RecordingSettle(tracker, [])))  # the policy replaces the producer
    finally:
        hanging.released.set()
    assert fresh.calls == ["init_transactions", "begin_transaction"] and tracker.committable() == {}


def test_a_hanging_commit_without_a_way_to_renew_or_at_shutdown_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.stages.commit.SEND_OFFSETS_TIMEOUT_S", 0.1)
    monkeypatch.setattr("workers.stages.commit._HANG_GRACE_S", 0.1)
    for renew, begin_next in ((None, True), (RecordingProducer, False)):
        hanging = HangingProducer()
        commits = ExactlyOnceCommits(RecordingConsumer(), hanging, _one_finished_offset(), renew=renew)
        try:
            with pytest.raises(CallHung, match="still running") as raised:
                asyncio.run(commits._commit(begin_next=begin_next))
        finally:
            hanging.released.set()
        assert raised.value.fatal
