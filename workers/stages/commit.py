"""Commit stage: which offsets may be committed, and the commit itself (at-least-once or transactional).

An input offset is *finished* when its outcome — the attribute event, the dead-letter record, or the
decision to drop a stale version — has been acknowledged by the broker. Batches finish out of order, so
per partition only the highest *contiguous* finished offset counts: the committed position is that
offset + 1, and nothing at or after the lowest unfinished offset is ever committed. When to commit, and
what to do on a rebalance, is the commit policy's (`workers.stages.commit_policy`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from workers.contract.errors import KafkaOperationFailed

__all__ = [
    "SEND_OFFSETS_TIMEOUT_S",
    "CallHung",
    "CommittingConsumer",
    "OffsetTracker",
    "TopicPartitionKey",
    "TransactionalProducer",
    "commit_offsets",
    "commit_reporter",
    "commit_transaction",
    "failure_kind",
]

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


class OffsetTracker:
    """Per-partition bookkeeping of consumed (`track`) and finished (`finish`) offsets.

    Offsets of one partition must be tracked in increasing order (as the consumer returns them); they
    need not be contiguous (compaction, transaction markers). `reset` drops everything and starts a new
    `epoch`: work consumed before it may no longer produce or finish anything (exactly-once, after the
    open transaction was aborted).
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartitionKey, deque[int]] = {}
        self._finished: dict[TopicPartitionKey, set[int]] = {}
        self._position: dict[TopicPartitionKey, int] = {}
        self._committed: dict[TopicPartitionKey, int] = {}  # confirmed by the broker
        self._sent: dict[TopicPartitionKey, int] = {}  # committed asynchronously, answer not heard yet
        self._reports: deque[tuple[dict[TopicPartitionKey, int], bool]] = deque()  # from any thread
        self.epoch = 0

    def track(self, tp: TopicPartitionKey, offset: int) -> None:
        self._pending.setdefault(tp, deque()).append(offset)

    def finish(self, tp: TopicPartitionKey, offset: int, epoch: int | None = None) -> None:
        """Mark `offset` finished; advances the partition's position over every contiguous finished one."""
        self.finish_many(tp, (offset,), epoch)

    def finish_many(self, tp: TopicPartitionKey, offsets: Iterable[int], epoch: int | None = None) -> None:
        """`finish` for several offsets of one partition; ignored when consumed in an earlier `epoch`."""
        pending = self._pending.get(tp)
        if pending is None or (epoch is not None and epoch != self.epoch):
            return  # partition revoked meanwhile (its offsets are someone else's now), or reset
        finished = self._finished.setdefault(tp, set())
        finished.update(offsets)
        while pending and pending[0] in finished:
            done = pending.popleft()
            finished.discard(done)
            self._position[tp] = done + 1

    def unfinished(self, partitions: Iterable[TopicPartitionKey] | None = None) -> int:
        """Tracked offsets not finished yet (in `partitions`, or in all)."""
        keys = self._pending.keys() if partitions is None else partitions
        return sum(len(self._pending.get(tp, ())) - len(self._finished.get(tp, ())) for tp in keys)

    def committable(
        self, partitions: Iterable[TopicPartitionKey] | None = None, *, resend: bool = False
    ) -> dict[TopicPartitionKey, int]:
        """Positions (last contiguous finished offset + 1) that moved since they were last committed.

        A position committed asynchronously counts as committed until the broker's answer says otherwise
        (then it is committable again); `resend` (a synchronous commit) includes it anyway."""
        self._apply_reports()
        keys = self._position.keys() if partitions is None else partitions
        committed, sent, position = self._committed, self._sent, self._position
        return {
            tp: position[tp]
            for tp in keys
            if tp in position
            and position[tp] != committed.get(tp)
            and (resend or position[tp] != sent.get(tp))
        }

    def mark_committed(self, positions: dict[TopicPartitionKey, int]) -> None:
        self._committed.update(positions)

    def mark_sent(self, positions: dict[TopicPartitionKey, int]) -> None:
        """Positions committed asynchronously: not committable again unless `report_commit` says failed."""
        self._sent.update(positions)

    def report_commit(self, positions: dict[TopicPartitionKey, int], *, ok: bool) -> None:
        """The broker's answer to a commit (any thread: the consumer's `on_commit`); applied on the
        owner's thread at the next `committable`."""
        self._reports.append((positions, ok))

    def _apply_reports(self) -> None:
        reports, committed, sent = self._reports, self._committed, self._sent
        while reports:
            positions, ok = reports.popleft()
            for tp, offset in positions.items():
                if tp not in self._position:
                    continue  # forgotten meanwhile
                if ok and offset > committed.get(tp, -1):
                    committed[tp] = offset
                if sent.get(tp) == offset:
                    del sent[tp]  # answered: confirmed, or committable again at the next commit

    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """Drop all state of revoked or lost partitions; late `finish` calls for them are ignored."""
        for tp in partitions:
            for table in (self._pending, self._finished, self._position, self._committed, self._sent):
                table.pop(tp, None)

    def reset(self) -> None:
        """Drop the state of every partition and start a new epoch (late finishes of the old one ignored)."""
        for table in (self._pending, self._finished, self._position, self._committed, self._sent):
            table.clear()
        self._reports.clear()
        self.epoch += 1


def commit_reporter(
    tracker: OffsetTracker, on_failure: Callable[[str], None] | None = None
) -> Callable[[Any, list[Any]], None]:
    """The consumer's `on_commit` callback: librdkafka serves it in `consume()` (the consume thread) with
    the answer to every commit; it reaches `tracker` as `report_commit`, and a failed one `on_failure`
    ("offsets")."""

    def on_commit(error: Any, partitions: list[Any]) -> None:
        ok: dict[TopicPartitionKey, int] = {}
        failed: dict[TopicPartitionKey, int] = {}
        for tp in partitions:
            bad = error is not None or tp.error is not None
            (failed if bad else ok)[(tp.topic, tp.partition)] = tp.offset
        if failed:
            log.warning("offset commit failed (committed again at the next commit): %s %s", error, failed)
            tracker.report_commit(failed, ok=False)
            if on_failure is not None:
                on_failure("offsets")
        if ok:
            tracker.report_commit(ok, ok=True)

    return on_commit


class CommittingConsumer(Protocol):
    def commit(self, *, offsets: list[Any], asynchronous: bool) -> Any: ...

    def consumer_group_metadata(self) -> Any: ...


class TransactionalProducer(Protocol):
    def flush(self, timeout: float) -> int: ...

    def send_offsets_to_transaction(
        self, positions: list[Any], group_metadata: Any, timeout: float
    ) -> None: ...

    def commit_transaction(self, timeout: float) -> None: ...

    def begin_transaction(self) -> None: ...

    def init_transactions(self, timeout: float) -> None: ...

    def abort_transaction(self, timeout: float) -> None: ...


def _topic_partitions(positions: dict[TopicPartitionKey, int]) -> list[Any]:
    from confluent_kafka import TopicPartition

    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]


def commit_offsets(
    consumer: CommittingConsumer,
    tracker: OffsetTracker,
    *,
    partitions: Iterable[TopicPartitionKey] | None = None,
    asynchronous: bool = True,
) -> dict[TopicPartitionKey, int]:
    """At-least-once commit of finished work. Steps, in order:

    1. Delivery: nothing to wait for here — an offset only counts as finished after the broker
       acknowledged its output, and a failed delivery stops the worker before anything past it finishes.
    2. Positions: per partition, the highest contiguous finished offset + 1 (`tracker.committable`).
    3. Commit those positions (synchronously on revoke/shutdown, asynchronously otherwise), then
       remember them so an unchanged partition is not committed again: a synchronous commit as
       committed, an asynchronous one as sent until the broker's answer (`commit_reporter`) confirms it
       or makes it committable again.
    Returns what was committed (or sent).
    """
    positions = tracker.committable(partitions, resend=not asynchronous)
    if not positions:
        return {}
    try:
        consumer.commit(offsets=_topic_partitions(positions), asynchronous=asynchronous)
    except KafkaException as exc:
        raise KafkaOperationFailed("commit", f"{exc} (positions {positions})", retriable=True) from exc
    (tracker.mark_sent if asynchronous else tracker.mark_committed)(positions)
    log.debug("committed %s", positions)
    return positions


def commit_transaction(
    producer: TransactionalProducer,
    consumer: CommittingConsumer,
    tracker: OffsetTracker,
    *,
    timeout_s: float = 30.0,
    begin_next: bool = True,
) -> dict[TopicPartitionKey, int]:
    """Exactly-once commit: the outputs produced in the open transaction and the input positions commit
    atomically. The caller must have quiesced the pipeline first (no unfinished tracked offset), so every
    output in the transaction belongs to an offset below the positions sent here. Steps:

    1. Flush the producer (all outputs of the transaction acknowledged).
    2. `send_offsets_to_transaction` with the consumer's group metadata (fences zombie instances).
    3. `commit_transaction`; then begin the next one unless shutting down.
    An error is `retriable` when the transaction only needs aborting (`ExactlyOnceCommits` then starts
    over); any other is fatal for the process: a restarted worker resumes from the last committed one.
    """
    if tracker.unfinished():
        raise KafkaOperationFailed("commit_transaction", "called with unfinished offsets; quiesce first")
    positions = tracker.committable()
    try:
        remaining = producer.flush(timeout_s)
        if remaining:
            raise KafkaOperationFailed("commit_transaction", f"{remaining} outputs not acknowledged in time")
        if positions:
            metadata = consumer.consumer_group_metadata()
            _bounded(partial(producer.send_offsets_to_transaction, _topic_partitions(positions), metadata,
                             SEND_OFFSETS_TIMEOUT_S), SEND_OFFSETS_TIMEOUT_S + _HANG_GRACE_S)  # fmt: skip
        producer.commit_transaction(timeout_s)
        if begin_next:
            producer.begin_transaction()
    except KafkaException as exc:
        # Abortable (e.g. the group rebalanced: the offsets' generation is stale) → `retriable`: the
        # caller may abort and start over; anything else (fenced, fatal) stops the worker.
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        abortable = error is not None and error.txn_requires_abort()
        fatal, fenced = failure_kind(error)
        raise KafkaOperationFailed(
            "commit_transaction", str(exc), retriable=abortable, fatal=fatal, fenced=fenced
        ) from exc
    tracker.mark_committed(positions)
    return positions


# librdkafka's send_offsets_to_transaction ignores its timeout while the group coordinator it cached is
# down (librdkafka #5456 and #5511, open in 2.16): the exactly-once-failover test's workers waited in it
# for 75 s to 5 min whenever the killed broker was the coordinator, their intake stopped meanwhile. A
# coordinator failover takes about 10 s here (KRaft's broker session timeout, then FindCoordinator), so a
# call still running 5 s past its 15 s timeout is hung: the caller replaces the producer (CallHung).
SEND_OFFSETS_TIMEOUT_S = 15.0
_HANG_GRACE_S = 5.0


class CallHung(KafkaOperationFailed):
    """A librdkafka call ran past its own timeout and was left behind in its thread; the client it was
    made on must not be used again."""


def _bounded(call: Callable[[], None], limit_s: float) -> None:
    """`call()` in a daemon thread, waited for up to `limit_s` (CallHung past it); its error is re-raised."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # re-raised on the caller's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, name="kafka-send-offsets", daemon=True)
    thread.start()
    thread.join(limit_s)
    if not outcome:
        raise CallHung("commit_transaction", f"send_offsets_to_transaction still running after "
                       f"{limit_s:.0f} s (librdkafka #5456: a cached group coordinator that is down)",
                       fatal=True)  # fmt: skip
    if outcome[0] is not None:
        raise outcome[0]


_FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
     KafkaError.TRANSACTION_COORDINATOR_FENCED}
)  # fmt: skip


def failure_kind(error: KafkaError | None) -> tuple[bool, bool]:
    """(fatal, fenced) of a librdkafka error: a fatal producer must be replaced; a fenced one must stop,
    another instance with its transactional id took over."""
    if error is None:
        return False, False
    fenced = error.code() in _FENCED_CODES
    return error.fatal() or fenced, fenced
