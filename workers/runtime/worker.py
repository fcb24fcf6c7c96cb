"""The stream worker: consume, validate, cache, batch, infer, decode, guard, emit, commit.

Assembled by `workers.runtime.assembly.build_worker`.

`StreamWorker.run()` is one asyncio loop. Its intake step consumes a chunk of records (in the consume
thread), validates them (invalid ones go to the dead-letter topic) and looks the whole chunk up in the
cache with one MGET. Hits are published at once (guard, emit); only misses are tokenized and put into
length-bucketed micro-batches. Each released batch becomes a task: inference (retried behind the circuit
breaker while the partitions are paused), decoding, the cache write, then publishing. An input offset is
finished when its output is acknowledged; every commit and transaction decision is the commit policy's
(`workers.stages.commit`: at-least-once or exactly-once).

The model in force is `serving` (model, backend, cache namespace: `workers.stages.serving`). A batch
captures it when launched; `between_batches` replaces it (`workers.runtime.model_swap`).
A candidate (`trial`, `workers.stages.trial`) is set the same way: a canary serves its share of each chunk,
a shadow runs it on a sample next to the active model (`workers.runtime.shadow`).
The steps that follow the group and the process (control task, commit tick, rebalance callbacks, drain,
shutdown) are `workers.runtime.membership.GroupMember`'s, a base of `StreamWorker`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from confluent_kafka import Message

from workers.contract.errors import KafkaOperationFailed, ValidationFailed
from workers.contract.events import SourceRecord
from workers.contract.results import ListingResult
from workers.model.served import ServedModel
from workers.runtime.broker import BrokerHealth
from workers.runtime.config import BatchConfig, KafkaConfig
from workers.runtime.membership import SHUTDOWN_FLUSH_S, GroupMember
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.producer import AsyncProducer
from workers.stages.batch import Batch, MicroBatcher
from workers.stages.commit import OffsetTracker, TopicPartitionKey
from workers.stages.commit_policy import CommitPolicy
from workers.stages.consume import KafkaSource
from workers.stages.dead_letter import DeadLetterWriter
from workers.stages.emit import AttributeEmitter
from workers.stages.infer import BatchEnricher
from workers.stages.item import WorkItem
from workers.stages.lag import LagProbe
from workers.stages.serving import Serving
from workers.stages.trial import Trial, batch_key, serving_for, timed
from workers.stages.validate import ListingValidator

__all__ = ["SHUTDOWN_FLUSH_S", "StreamWorker"]

log = logging.getLogger(__name__)

# librdkafka's batch consume() waits out its whole timeout unless the batch fills: at moderate rates that
# wait is every record's latency, so it is kept to the micro-batch window (ENRICH_MAX_WAIT_MS) or less.
_POLL_TIMEOUT_MAX_S = 0.1
_FULL_WINDOW_WAIT_S = 0.002
_SERVE_CALLBACKS_EVERY_S = 0.5
# A chunk's cache lookup and publishing wait on Redis (MGET, the guard's script) and on the lock that orders
# publishing; intake validates the next chunk meanwhile. Two in flight keeps both the event loop and Redis
# busy; more would only queue on that lock.
_LOOKUPS_IN_FLIGHT = 2


class StreamWorker(GroupMember):
    """One consumer-group member; its collaborators are passed in (see `workers.runtime.assembly`)."""

    def __init__(
        self,
        *,
        kafka: KafkaConfig,
        batch: BatchConfig,
        worker_id: str,
        source: KafkaSource,
        validator: ListingValidator,
        dead_letters: DeadLetterWriter,
        serving: Serving,
        batcher: MicroBatcher[WorkItem],
        enricher: BatchEnricher,
        emitter: AttributeEmitter,
        producer: AsyncProducer,
        tracker: OffsetTracker,
        commits: CommitPolicy,
        metrics: WorkerMetrics,
        broker: BrokerHealth | None = None,
        lag_probe: LagProbe | None = None,
    ) -> None:
        self._kafka, self._batch_config, self.worker_id = kafka, batch, worker_id
        self._source, self._validator, self._dead_letters = source, validator, dead_letters
        self.serving, self._batcher, self.enricher, self._emitter = serving, batcher, enricher, emitter
        self._producer, self._tracker, self._commits = producer, tracker, commits
        self.metrics = metrics
        self.broker = broker if broker is not None else BrokerHealth()
        self._consumed_any = False  # the first consumed chunk stamps metrics.first_consumed_at
        # Released batches queue here rather than all awaiting Redis at once: with a backlog, ~100 batches
        # in flight made each MGET wait behind the others' decoding past the cache's socket timeout, and
        # exhausted redis-py's connection pool (MaxConnectionsError): the cache and the shared stale-update
        # guard switched off exactly during catch-up.
        self._batch_slots = asyncio.Semaphore(2 * batch.max_in_flight)
        self._lookup_slots = asyncio.Semaphore(_LOOKUPS_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._running = False
        self._stopped = False
        self._closing = False
        self._heartbeat = 0.0
        self._last_consume = 0.0
        self._read_epoch = 0  # the tracker epoch the consumer's positions belong to (see _intake_once)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_lag = 0.0
        self._lag_probe, self._lag_task = lag_probe, None  # the lag gauge (None: not measured)
        # Read at scrape time: a partition assigned while intake is paused starts paused (KafkaSource).
        metrics.paused_partitions.set_function(lambda: len(source.assigned) if source.paused else 0)
        # The control task (hot swap: `workers.runtime.model_swap.ModelFollower.run`), set by the assembly.
        self.control: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None
        self._control_stop = asyncio.Event()
        self._control_task: asyncio.Task[None] | None = None
        self.trial: Trial | None = None  # shadow or canary candidate (`workers.runtime.trial_follow`)

    # ---- lifecycle -------------------------------------------------------------------------------------

    @property
    def model(self) -> ServedModel:
        """The model in force (the one new batches are tokenized with)."""
        return self.serving.model

    @property
    def assigned(self) -> set[TopicPartitionKey]:
        """Partitions this worker owns now."""
        return set(self._source.assigned)

    @property
    def unfinished(self) -> int:
        """Listings consumed whose output (event, dead letter or stale drop) is not acknowledged yet."""
        return self._tracker.unfinished()

    @property
    def paused(self) -> bool:
        """Whether intake is paused (backend blocked or too much unfinished work)."""
        return self._source.paused

    def is_live(self) -> bool:
        """Starting, or the intake loop turned recently (a drain may hold it up to drain_timeout_s)."""
        if self._stopped:
            return False
        return not self._running or time.monotonic() - self._heartbeat < self._kafka.drain_timeout_s + 30

    def is_ready(self) -> bool:
        """Running, the inference breaker closed, and the consumer reaching a broker."""
        return self._running and self.enricher.breaker.state == "closed" and self.broker.reachable

    async def run(self, stop: asyncio.Event) -> None:
        """Process until `stop` is set (SIGTERM), then drain, commit and leave the group."""
        self._loop = loop = asyncio.get_running_loop()
        self._producer.start(loop)
        interval_s = self._kafka.commit_interval_ms / 1000
        next_commit = loop.time() + interval_s
        failed = True
        try:
            await self._commits.begin()
            self._source.subscribe(
                on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            if self.control is not None:
                self._control_task = loop.create_task(self._follow(self.control))
            self._running = True
            while not stop.is_set():
                self._heartbeat = time.monotonic()
                await self._recover_or_raise()
                await self._intake_once()
                if loop.time() >= next_commit:
                    await self._commit_tick()
                    next_commit = loop.time() + interval_s
            failed = False
        finally:
            await self._shutdown(failed=failed)

    async def _recover_or_raise(self) -> None:
        """A failed batch or delivery stops the worker, unless the commit policy recovers from it
        (exactly-once: abort the transaction, read its input again)."""
        failure = self._fatal or self._producer.failure
        if failure is None:
            return
        if not await self._commits.recover(failure):
            raise failure
        # Only what was handled: another failure recorded during the recovery is looked at next turn.
        if self._fatal is failure:
            self._fatal = None
        if self._producer.failure is failure:
            self._producer.clear_failure()

    # ---- intake: consume, validate, tokenize, batch ------------------------------------------------------

    async def _intake_once(self) -> None:
        # Pausing makes librdkafka drop the records it has prefetched (librdkafka#5343), which are then
        # fetched again on resume: it is kept for a blocked backend (a long wait). A full in-flight window
        # only holds back consume() briefly; librdkafka's own queue limits stop its fetching meanwhile.
        self._source.set_paused(self.enricher.blocked > 0)
        wait = self._batcher.seconds_until_due()
        timeout = min(_POLL_TIMEOUT_MAX_S, max(self._batch_config.max_wait_ms / 1000, 0.001))
        if wait is not None:
            timeout = min(timeout, max(wait, 0.001))
        max_messages = self._kafka.consume_max_messages
        if self._tracker.unfinished() >= self._batch_config.max_pending and not self._source.paused:
            if time.monotonic() - self._last_consume < _SERVE_CALLBACKS_EVERY_S:
                await asyncio.sleep(min(timeout, _FULL_WINDOW_WAIT_S))
                self._launch_due()
                return
            max_messages = 1  # keep serving rebalance callbacks and group membership
        self._last_consume = time.monotonic()
        epoch = self._tracker.epoch
        if epoch != self._read_epoch:
            # The commit policy dropped all in-flight work (exactly-once: the transaction was aborted):
            # read every partition still owned again from its committed offset, before consuming more.
            await self._source.rewind()
            self._read_epoch = epoch
        messages = await self._source.consume(max_messages, timeout)
        if messages and messages[-1].error() is None:  # a record fetched: a broker answers
            self.broker.saw_traffic()
        if self._tracker.epoch != epoch:
            messages = []  # read before the rewind (the reset came from a callback inside consume())
        if messages:
            await self._accept(messages, epoch)
        self._launch_due()

    def _launch_due(self) -> None:
        for batch in self._batcher.due():
            self._launch(batch)

    async def _accept(self, messages: list[Message], epoch: int) -> None:
        valid: list[WorkItem] = []
        consumed = 0
        now = time.monotonic()
        assigned, track, validate = self._source.assigned, self._tracker.track, self._validator.validate
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise KafkaOperationFailed("consume", str(error))
                log.warning("consumer error (librdkafka retries it): %s", error)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if (topic, partition) not in assigned:
                continue  # revoked meanwhile: its new owner reads it from the committed offset
            track((topic, partition), offset)
            consumed += 1
            ts_type, ts = msg.timestamp()
            source = SourceRecord(topic, partition, offset, msg.key(), ts if ts_type else None)
            value = msg.value()
            try:
                valid.append(WorkItem(source, validate(value, source.key), now, epoch=epoch))
            except ValidationFailed as exc:
                await self._dead_letters.write(source, value, exc, epoch, msg.headers())
        self.metrics.events_in.inc(consumed)
        if consumed and not self._consumed_any:
            self._consumed_any = True
            self.metrics.first_consumed_at.set(time.time())
        if valid:
            await self._lookup_slots.acquire()
            self._start(self._lookup(valid))

    async def _lookup(self, items: list[WorkItem]) -> None:
        """Publish the chunk's cache hits now; tokenize the misses into their micro-batches."""
        try:
            await self._lookup_and_publish(items)
        finally:
            self._lookup_slots.release()

    async def _lookup_and_publish(self, items: list[WorkItem]) -> None:
        # Captured once: a swap or a new trial waits for this lookup (it holds a lookup slot), so the chunk's
        # hits and misses all belong to the models of this split (a canary's share: its own model).
        active, trial = self.serving, self.trial
        for serving, part in trial.route(items, active) if trial is not None else [(active, items)]:
            await self._lookup_part(part, serving, active)

    async def _lookup_part(self, items: list[WorkItem], serving: Serving, active: Serving) -> None:
        cached = await serving.cache.lookup([item.listing.title for item in items])
        hits: list[WorkItem] = []
        results: list[ListingResult] = []
        misses: list[WorkItem] = []
        for item, result in zip(items, cached, strict=True):
            if result is None:
                misses.append(item)
            else:
                hits.append(item)
                results.append(result)
        if hits:
            await self._emitter.emit(
                hits, results, cache_hit=True, model=serving.identity, rank=serving.model.rank
            )
            if self.trial is not None and self.trial.shadow is not None:  # a shadow sample, off this path
                self.trial.shadow(hits, results, serving, None)
        if not misses:
            return
        encoder, digest = serving.model.encoder, serving.digest
        for item, enc in zip(misses, encoder.encode([item.listing.title for item in misses]), strict=True):
            item.encoded, item.model_digest = enc, digest
            batch = self._batcher.add(item, batch_key(serving, active, encoder.bucket_for(enc.length)))
            if batch is not None:
                self._launch(batch)
        # The intake loop may be inside a long consume() wait: release these misses' batch on time.
        wait = self._batcher.seconds_until_due()
        if wait is not None:
            asyncio.get_running_loop().call_later(wait, self._launch_due)

    def _launch(self, batch: Batch[WorkItem]) -> None:
        serving = serving_for(batch.items[0], self.serving, self.trial)  # the model that tokenized them
        serving.enter()
        self._start(self._process(batch, serving)).add_done_callback(lambda _: serving.leave())

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._fatal is None:
            self._fatal = task.exception()
            log.error("batch failed; stopping without committing past it: %r", self._fatal)

    # ---- one batch of misses: infer, decode, cache write, guard, emit -------------------------------------

    async def _process(self, batch: Batch[WorkItem], serving: Serving) -> None:
        async with self._batch_slots:
            self.metrics.in_flight_batches.inc()
            self.metrics.batch_size.observe(len(batch))
            try:
                items = batch.items
                digest = serving.digest
                if any(item.model_digest is not digest for item in items):  # the swap's invariant, checked
                    self.metrics.mixed_batches.inc()
                    log.error("batch of %d items mixes models; inferring it on %s", len(items), digest)
                results, infer_s = await timed(self.enricher.infer(items, serving))
                await serving.cache.store([(i.listing.title, r) for i, r in zip(items, results, strict=True)])
                await self._emitter.emit(
                    items, results, cache_hit=False, model=serving.identity, rank=serving.model.rank
                )
                if self.trial is not None and self.trial.shadow is not None:
                    self.trial.shadow(items, results, serving, infer_s)
            finally:
                self.metrics.in_flight_batches.dec()

    async def between_batches(self, change: Callable[[], None]) -> None:
        """Run `change` (replace `serving`, the model in force, or `trial`, the candidate) between batches.

        Holding every lookup slot waits out the chunks being looked up or tokenized (they captured the
        old models) and keeps new ones from starting; the open micro-batches are then launched on the models
        that tokenized them, so the batcher is empty when a model changes and no batch mixes models. Batches
        already launched finish on their model (see `Serving.wait_idle`)."""
        held = 0
        try:
            for _ in range(_LOOKUPS_IN_FLIGHT):
                await self._lookup_slots.acquire()
                held += 1
            for batch in self._batcher.drain():
                self._launch(batch)
            change()
        finally:
            for _ in range(held):
                self._lookup_slots.release()
