"""The stream worker's life as a consumer-group member: the control task, the commit tick, rebalance
callbacks, draining and shutdown. A base of `StreamWorker` (workers.runtime.worker), which owns the state
these steps use; kept apart so each module stays one concern.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from workers.stages.commit import TopicPartitionKey

if TYPE_CHECKING:
    from workers.runtime.broker import BrokerHealth
    from workers.runtime.config import KafkaConfig
    from workers.runtime.metrics import WorkerMetrics
    from workers.runtime.producer import AsyncProducer
    from workers.stages.batch import Batch, MicroBatcher
    from workers.stages.commit import OffsetTracker
    from workers.stages.commit_policy import CommitPolicy
    from workers.stages.consume import KafkaSource
    from workers.stages.item import WorkItem
    from workers.stages.lag import LagProbe
    from workers.stages.serving import Serving

__all__ = ["SHUTDOWN_FLUSH_S", "GroupMember"]

log = logging.getLogger("workers.runtime.worker")

# The lag is asked of the broker by the lag probe (workers.stages.lag) in the background: every few
# seconds is fresh enough for a 15 s scrape; at every commit tick (100 ms in the tests) it would be noise.
_LAG_EVERY_S = 5.0
# At shutdown, after the drain and the last commit: the longest wait for outstanding deliveries (dead
# letters, attribute events). deploy/k8s sizes terminationGracePeriodSeconds from it.
SHUTDOWN_FLUSH_S = 10.0


class GroupMember:
    """Steps of `StreamWorker` that follow the group and the process lifecycle, not the data."""

    worker_id: str
    metrics: WorkerMetrics
    serving: Serving
    broker: BrokerHealth
    _kafka: KafkaConfig
    _source: KafkaSource
    _batcher: MicroBatcher[WorkItem]
    _producer: AsyncProducer
    _tracker: OffsetTracker
    _commits: CommitPolicy
    _tasks: set[asyncio.Task[None]]
    _fatal: BaseException | None
    _running: bool
    _stopped: bool
    _closing: bool
    _loop: asyncio.AbstractEventLoop | None
    _next_lag: float
    _lag_probe: LagProbe | None
    _lag_task: asyncio.Task[None] | None
    _control_stop: asyncio.Event
    _control_task: asyncio.Task[None] | None

    def _launch(self, batch: Batch[WorkItem]) -> None:
        raise NotImplementedError

    async def _follow(self, control: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        """The control task; its failure costs the hot swap, never the stream."""
        try:
            await control(self._control_stop)
        except Exception:
            log.exception("the control task failed: no hot swap until the worker restarts")

    async def _stop_control(self) -> None:
        """Let the control task finish what it does (a swap in progress), bounded by the drain timeout."""
        task, self._control_task = self._control_task, None
        if task is None:
            return
        self._control_stop.set()
        try:
            await asyncio.wait_for(task, self._kafka.drain_timeout_s)
        except TimeoutError:
            log.warning("the control task did not stop in time; cancelled")

    async def _commit_tick(self) -> None:
        await self._commits.tick(self._finish_in_flight)
        probe, task = self._lag_probe, self._lag_task
        if probe is not None and time.monotonic() >= self._next_lag and (task is None or task.done()):
            self._next_lag = time.monotonic() + _LAG_EVERY_S
            self._lag_task = asyncio.get_running_loop().create_task(self._refresh_lag(probe))

    async def _refresh_lag(self, probe: LagProbe) -> None:
        """In the background: intake never waits for the broker's answer."""
        try:
            lags = await probe.lag(sorted(self._source.assigned))
        except Exception:  # the gauge keeps its last values; the next tick tries again
            log.exception("lag not measured")
            return
        if lags is not None:
            # Only what is still assigned now: a rebalance may have run while the probe asked.
            self.metrics.set_lags({tp: lag for tp, lag in lags.items() if tp in self._source.assigned})

    async def _stop_lag_probe(self) -> None:
        task, self._lag_task = self._lag_task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)  # bounded by the probe's own budget
        if self._lag_probe is not None:
            await self._lag_probe.close()

    async def _finish_in_flight(self, partitions: list[TopicPartitionKey] | None) -> None:
        """Release every open batch and wait (bounded) until the tracked offsets are finished."""
        deadline = time.monotonic() + self._kafka.drain_timeout_s
        while True:
            for batch in self._batcher.drain():  # again each turn: lookups in flight may add misses
                self._launch(batch)
            if not self._tracker.unfinished(partitions) or time.monotonic() >= deadline:
                return
            if self._fatal is not None or self._producer.failure is not None:
                return  # an offset whose output failed never finishes: the loop recovers or stops now
            await asyncio.sleep(0.005)

    def _on_assign(self, partitions: list[TopicPartitionKey]) -> None:
        if partitions:  # cooperative rebalances call every member, most with nothing new
            self.metrics.rebalances.labels(event="assigned").inc()
            self._next_lag = 0.0  # report the new partitions at the next tick

    def _on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        """Consume thread: finish the revoked partitions' work, commit it, then let the rebalance go on."""
        if partitions:
            self.metrics.rebalances.labels(event="revoked").inc()
        self.metrics.forget_partitions(partitions)  # their new owner reports their lag
        if self._closing or self._loop is None:
            return
        drain = self._commits.drain(partitions, self._finish_in_flight)
        self._source.wait_in_callback(asyncio.run_coroutine_threadsafe(drain, self._loop))

    def _on_lost(self, partitions: list[TopicPartitionKey]) -> None:
        """Consume thread: lost without a chance to commit; the policy decides before consume() goes on
        (exactly-once aborts the open transaction, see `ExactlyOnceCommits`)."""
        if partitions:
            self.metrics.rebalances.labels(event="lost").inc()
        self.metrics.forget_partitions(partitions)
        if self._closing or self._loop is None:
            return
        lost = self._commits.lost(partitions)
        self._source.wait_in_callback(asyncio.run_coroutine_threadsafe(lost, self._loop))

    async def abandon(self) -> None:
        """Close the clients of a worker that never ran (its start-up check refused the model)."""
        await self._stop_lag_probe()
        await self._source.close()
        self._producer.close()
        await self.serving.backend.close()
        await self.serving.cache.close()

    async def _shutdown(self, *, failed: bool) -> None:
        self._running = False
        self._stopped = True
        try:
            await self._stop_control()
            if not failed:
                await self._finish_in_flight(None)
            await self._commits.close(failed=failed)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._closing = True
            await self._stop_lag_probe()
            await self._source.close()
            await self._producer.flush(SHUTDOWN_FLUSH_S)
            # Destroy the librdkafka producer now, not whenever the garbage collector breaks our cycles.
            self._producer.close()
            await self.serving.backend.close()
            await self.serving.cache.close()
            log.info("worker stopped", extra={"worker_id": self.worker_id})
