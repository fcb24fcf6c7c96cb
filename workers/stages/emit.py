"""Guard -> emit: the attribute events of one batch, and the offsets they finish once acknowledged.

Batches (cache hits from intake, inferred misses from their tasks) reach `emit` out of order; a lock
makes the stale-update guard's decision and the production order the same. One guard round trip and
one hand-over of delivery reports per batch: the per-event work is building and producing the record.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from workers.contract.events import attribute_event, utc_now_iso
from workers.contract.results import ListingResult
from workers.runtime.metrics import WorkerMetrics, event_epoch
from workers.runtime.producer import AsyncProducer
from workers.stages.commit import OffsetTracker, TopicPartitionKey
from workers.stages.guard import StaleUpdateGuard
from workers.stages.item import WorkItem
from workers.stages.review import ReviewTap

__all__ = ["AttributeEmitter"]


class AttributeEmitter:
    """Admits each result through the guard, produces the admitted ones, finishes offsets on ack."""

    def __init__(
        self,
        *,
        topic: str,
        worker_id: str,
        guard: StaleUpdateGuard,
        producer: AsyncProducer,
        tracker: OffsetTracker,
        metrics: WorkerMetrics,
        headers: list[tuple[str, bytes]] | None = None,
        review: ReviewTap | None = None,
    ) -> None:
        """`headers` go on every event (replay marks its events with them); `review` copies low-confidence
        events to the review topic."""
        self._topic, self._worker_id, self._review, self._headers = topic, worker_id, review, headers
        self._guard, self._producer, self._tracker, self._metrics = guard, producer, tracker, metrics
        self._lock = asyncio.Lock()

    async def emit(
        self,
        items: list[WorkItem],
        results: list[ListingResult],
        *,
        cache_hit: bool,
        model: dict[str, str],
        rank: int = 0,
    ) -> None:
        """Produce one attribute event per admitted item, with `model` (name, version, digest: the model
        that produced `results`) whose `rank` orders models for the guard (`ServedModel.rank`); stale items
        finish without output."""
        async with self._lock:
            admitted = await self._guard.admit(
                [(item.listing.listing_id, item.listing.listing_version) for item in items], rank
            )
            now, processed_at = time.monotonic(), utc_now_iso()
            worker_id, tracker = self._worker_id, self._tracker
            # Checked here, after the guard's round trip: items consumed before the tracker was reset
            # (exactly-once: partitions lost, transaction aborted) must not reach the next transaction.
            epoch = tracker.epoch

            def current() -> bool:
                return tracker.epoch == epoch

            review = self._review.batch(current) if self._review is not None else None
            records: list[tuple[bytes, bytes]] = []
            finished: dict[TopicPartitionKey, list[int]] = {}
            event_times: list[float] = []  # of the records produced: freshness once acknowledged
            latency_ms: dict[float, float] = {}  # items consumed together share it
            for item, result, ok in zip(items, results, admitted, strict=True):
                if item.epoch != epoch:
                    continue  # read again from the committed offset
                source = item.source
                if not ok:
                    self._metrics.stale_dropped.inc()
                    tracker.finish((source.topic, source.partition), source.offset, epoch)
                    continue
                latency = latency_ms.get(item.consumed_at)
                if latency is None:
                    latency = latency_ms[item.consumed_at] = round(max(now - item.consumed_at, 0.0) * 1000, 3)
                listing = item.listing
                event_time = event_epoch(listing.event_time)
                if event_time is not None:
                    event_times.append(event_time)
                flagged = review.flag(listing.title, result) if review is not None else None
                key = listing.listing_id.encode()
                event = attribute_event(
                    listing, model=model, category_json=result.category_json,
                    attributes_json=result.attributes_json, cache_hit=cache_hit, latency_ms=latency,
                    worker_id=worker_id, processed_at=processed_at, review=flagged,
                )  # fmt: skip
                records.append((key, event))
                if flagged is not None and review is not None:
                    review.copy(key, event)  # the same event, to the review topic
                offsets = finished.get((source.topic, source.partition))
                if offsets is None:
                    offsets = finished[(source.topic, source.partition)] = []
                offsets.append(source.offset)
            on_delivered = partial(self._delivered, finished, event_times, epoch)
            if review is not None:  # offsets finish once the events and their review copies are acked
                on_delivered = review.after_both(on_delivered)
            await self._producer.produce_batch(
                self._topic, records, on_delivered, self._headers, current=current
            )
            if review is not None:
                await review.produce(self._headers)

    def _delivered(
        self, finished: dict[TopicPartitionKey, list[int]], event_times: list[float], epoch: int
    ) -> None:
        if epoch != self._tracker.epoch:
            return  # acknowledged into a transaction aborted since: not an output
        for tp, offsets in finished.items():
            self._tracker.finish_many(tp, offsets, epoch)
        self._metrics.events_out.inc(sum(len(offsets) for offsets in finished.values()))
        # Acknowledged, not yet committed: in exactly-once mode readers see it after the commit interval.
        now = time.time()
        self._metrics.observe_freshness(event_times, now)
        self._metrics.last_output_at.set(now)
