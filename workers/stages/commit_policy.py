"""Commit policies: every commit and transaction decision of one worker, at-least-once or exactly-once.

The mechanics (which offsets are finished, the commit calls themselves) are `workers.stages.commit`'s;
a policy decides when they run and what a rebalance or a lost partition means for in-flight work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from confluent_kafka import KafkaException

from workers.contract.errors import DeliveryFailed, KafkaOperationFailed
from workers.stages.commit import (
    CallHung,
    CommittingConsumer,
    OffsetTracker,
    TopicPartitionKey,
    TransactionalProducer,
    commit_offsets,
    commit_transaction,
    failure_kind,
)

__all__ = [
    "ABORT_TIMEOUT_S",
    "AtLeastOnceCommits",
    "CommitPolicy",
    "ExactlyOnceCommits",
    "Settle",
    "make_commit_policy",
]

log = logging.getLogger(__name__)

_MAX_RECOVERIES = 3
_RECOVERY_WINDOW_S = 60.0
# The longest wait for the broker to abort an open transaction (a failed shutdown, lost partitions).
ABORT_TIMEOUT_S = 30.0


# Hears each failed commit: "offsets" or "transaction" (the worker counts them, enrich_commit_failures).
OnFailure = Callable[[str], None]


def _ignore(kind: str) -> None:
    return None


# A callable that releases every open batch and waits (bounded) until the tracked offsets of
# `partitions` (all when None) are finished: the stream loop's, handed to the policy per call.
Settle = Callable[[list[TopicPartitionKey] | None], Awaitable[None]]


class CommitPolicy(Protocol):
    """Every commit and transaction decision of one worker, in the spirit of Quix Streams' `Checkpoint`.

    The stream loop calls `begin` once before it subscribes, `tick` every commit interval, `drain` when
    partitions are revoked (from the consume thread, through the event loop), `lost` when they were lost
    without a chance to commit (the consume thread waits for it too), `recover` when a produce or commit
    failed (true: the policy dealt with it and the worker goes on), and `close` once at shutdown
    (`failed` after an error). A policy that drops in-flight work calls `tracker.reset()`: the stream loop
    then drops what consume() returned meanwhile and reads every partition it still owns again from its
    committed offset."""

    tracker: OffsetTracker

    async def begin(self) -> None: ...

    async def tick(self, settle: Settle) -> None: ...

    async def drain(self, partitions: list[TopicPartitionKey], settle: Settle) -> None: ...

    async def lost(self, partitions: list[TopicPartitionKey]) -> None: ...

    async def recover(self, failure: BaseException) -> bool: ...

    async def close(self, *, failed: bool) -> None: ...


class AtLeastOnceCommits:
    """Commit finished offsets: asynchronously on the timer, synchronously on revoke and at shutdown.

    Safe even after a failure: only acknowledged, contiguous offsets are ever committable, so a crash
    between output and commit re-processes (duplicates), never skips.
    """

    def __init__(
        self, consumer: CommittingConsumer, tracker: OffsetTracker, on_failure: OnFailure = _ignore
    ) -> None:
        self._consumer, self.tracker, self._on_failure = consumer, tracker, on_failure

    async def begin(self) -> None:
        return None

    async def tick(self, settle: Settle) -> None:
        try:
            commit_offsets(self._consumer, self.tracker, asynchronous=True)
        except KafkaOperationFailed as exc:
            self._on_failure("offsets")
            log.warning("%s; retried at the next commit", exc)

    async def drain(self, partitions: list[TopicPartitionKey], settle: Settle) -> None:
        await settle(partitions)
        try:
            # In a thread: the revoke callback holds the consume thread, the event loop must keep turning.
            commit = partial(commit_offsets, self._consumer, self.tracker, partitions=partitions)
            await asyncio.to_thread(commit, asynchronous=False)
        except KafkaOperationFailed as exc:
            self._on_failure("offsets")
            log.warning("commit on revoke failed (the new owner re-processes from earlier): %s", exc)
        self.tracker.forget(partitions)

    async def lost(self, partitions: list[TopicPartitionKey]) -> None:
        # Their new owner re-processes from the last commit (duplicates, never a loss); late acks ignored.
        self.tracker.forget(partitions)

    async def recover(self, failure: BaseException) -> bool:
        # Records after an unacknowledged one may have been written: only a restart, re-reading from the
        # last commit, keeps the order and loses nothing.
        return False

    async def close(self, *, failed: bool) -> None:
        commit_offsets(self._consumer, self.tracker, asynchronous=False)


class ExactlyOnceCommits:
    """Kafka transactions: outputs and input positions commit atomically (`commit_transaction`).

    A transaction may only hold finished offsets, so every commit first settles all in-flight work
    (intake waits meanwhile); a failed or unfinished worker aborts at shutdown instead of committing.

    Lost partitions: the open transaction holds outputs of theirs, which their new owner produces again
    from the last committed offset; committing it (with the remaining partitions' offsets, or none) would
    show those twice to read_committed readers. So the policy starts over: `reset` the tracker first
    (batches in flight can no longer produce into the next transaction nor finish offsets), abort the
    transaction (it also held outputs of the partitions kept: those are read again from their committed
    offsets) and begin the next. A transaction commit that fails abortably (e.g. a zombie woken after its
    session expired commits with a stale generation) starts over the same way.

    A failed delivery or a *fatal* producer error starts over too: nothing of the open transaction was
    committed, so it is aborted and its input read again. A fatal error (seen after a broker failover:
    `OUT_OF_ORDER_SEQUENCE_NUMBER`) leaves the librdkafka producer unusable, so `renew` builds a new one
    with the same transactional id; its `init_transactions` aborts the old transaction at the coordinator.
    Fenced (another instance took over the transactional id) is never recovered from: this one is the
    zombie. More than `_MAX_RECOVERIES` within `_RECOVERY_WINDOW_S` stops the worker too (a restart then
    resumes from the last commit) rather than loop.
    """

    def __init__(
        self,
        consumer: CommittingConsumer,
        producer: TransactionalProducer,
        tracker: OffsetTracker,
        *,
        renew: Callable[[], TransactionalProducer] | None = None,
        on_failure: OnFailure = _ignore,
    ) -> None:
        self._consumer, self._producer, self.tracker = consumer, producer, tracker
        self._renew, self._on_failure = renew, on_failure
        self._recoveries: list[float] = []

    async def begin(self) -> None:
        await asyncio.to_thread(self._producer.init_transactions, 60)
        self._producer.begin_transaction()

    async def tick(self, settle: Settle) -> None:
        if not self.tracker.committable() and not self.tracker.unfinished():
            return
        await settle(None)
        if self.tracker.unfinished():
            log.warning("in-flight batches did not finish in time; transaction commit postponed")
            return
        await self._commit()

    async def drain(self, partitions: list[TopicPartitionKey], settle: Settle) -> None:
        # The open transaction spans every partition: it can only commit once all work is finished.
        await settle(None)
        await self._commit()
        self.tracker.forget(partitions)

    async def lost(self, partitions: list[TopicPartitionKey]) -> None:
        log.warning("partitions %s lost: aborting the open transaction, reading the rest again", partitions)
        await self._start_over()

    async def recover(self, failure: BaseException) -> bool:
        if not isinstance(failure, DeliveryFailed | KafkaOperationFailed) or failure.fenced:
            return False
        if not self._may_recover():
            return False
        log.warning("%s; aborting the open transaction and reading its input again", failure)
        self.tracker.reset()
        await self._abort()
        try:
            # Also the probe: a producer in a fatal state says here which error made it so (a delivery
            # report only says it failed).
            self._producer.begin_transaction()
            return True
        except KafkaException as exc:
            fatal, fenced = failure_kind(exc.args[0] if exc.args else None)
            if fenced or not fatal or self._renew is None:
                raise KafkaOperationFailed("begin_transaction", str(exc), fatal=fatal, fenced=fenced) from exc
        await self._replace_producer("its fatal error")
        return True

    def _may_recover(self) -> bool:
        now = time.monotonic()
        self._recoveries = [t for t in self._recoveries if now - t < _RECOVERY_WINDOW_S] + [now]
        return len(self._recoveries) <= _MAX_RECOVERIES

    async def _replace_producer(self, why: str) -> None:
        assert self._renew is not None
        self._producer = self._renew()  # its init_transactions aborts the old one's transaction
        try:
            await asyncio.to_thread(self._producer.init_transactions, 60)
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise KafkaOperationFailed("init_transactions", str(exc)) from exc
        log.warning("replaced the producer after %s; transactions resumed", why)

    async def close(self, *, failed: bool) -> None:
        try:
            if failed or self.tracker.unfinished():
                await self._abort()
            else:
                await self._commit(begin_next=False)
        finally:
            # The worker destroys the librdkafka producer at shutdown by dropping its last reference.
            del self._producer

    async def _commit(self, *, begin_next: bool = True) -> None:
        commit = partial(commit_transaction, self._producer, self._consumer, self.tracker)
        try:
            await asyncio.to_thread(commit, begin_next=begin_next)
        except CallHung as hung:
            # The hung call stays blocked inside the old producer (its thread keeps it alive); nothing of the
            # open transaction committed, so its input is read again through a new producer.
            self._on_failure("transaction")
            if not begin_next or self._renew is None or not self._may_recover():
                raise
            log.warning("%s; replacing the producer and reading the uncommitted input again", hung)
            self.tracker.reset()
            await self._replace_producer("a transaction commit that hung")
        except KafkaOperationFailed as exc:
            self._on_failure("transaction")
            if not begin_next:
                raise
            if exc.retriable:
                log.warning("%s; aborting it and reading the uncommitted input again", exc)
                await self._start_over()
            elif not await self.recover(exc):
                raise

    async def _start_over(self) -> None:
        self.tracker.reset()  # first, on the loop: nothing consumed before may produce or finish from here
        await self._abort()
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:  # fatal (fenced): a restarted worker resumes from the last commit
            raise KafkaOperationFailed("begin_transaction", str(exc)) from exc

    async def _abort(self) -> None:
        try:
            await asyncio.to_thread(self._producer.abort_transaction, ABORT_TIMEOUT_S)
        except KafkaException as exc:  # fenced or already aborted: the broker discards it either way
            log.warning("abort_transaction failed: %s", exc)


def make_commit_policy(
    *,
    exactly_once: bool,
    consumer: CommittingConsumer,
    producer: TransactionalProducer,
    tracker: OffsetTracker,
    renew: Callable[[], TransactionalProducer] | None = None,
    on_failure: OnFailure = _ignore,
) -> CommitPolicy:
    """The policy the configuration asks for (`ENRICH_EXACTLY_ONCE`)."""
    if exactly_once:
        return ExactlyOnceCommits(consumer, producer, tracker, renew=renew, on_failure=on_failure)
    return AtLeastOnceCommits(consumer, tracker, on_failure)
