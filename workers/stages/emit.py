"""Guard -> emit: the attribute events of one batch, and the offsets they finish once acknowledged.

Batches (cache hits from intake, inferred misses from their tasks) reach `emit` out of order; a lock
makes the stale-update guard's decision and the production order the same. One guard round trip and
one hand-over of delivery reports per batch: the per-event work is building and producing the record.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from prometheus_client import Counter

from workers.contract.events import attribute_event, utc_now_iso
from workers.contract.results import ListingResult
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.producer import AsyncProducer
from workers.stages.commit import OffsetTracker, TopicPartitionKey
from workers.stages.guard import StaleUpdateGuard
from workers.stages.item import WorkItem

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
    ) -> None:
        self._topic, self._worker_id = topic, worker_id
        self._guard, self._producer, self._tracker, self._metrics = guard, producer, tracker, metrics
        self._lock = asyncio.Lock()
        self._stale = Counter(
            "enrich_stale_dropped",
            "Outputs not sent: a newer listing_version was already emitted",
            registry=metrics.registry,
        )

    async def emit(
        self, items: list[WorkItem], results: list[ListingResult], *, cache_hit: bool, model: dict[str, str]
    ) -> None:
        """Produce one attribute event per admitted item, with `model` (name, version, digest: the model
        that produced `results`); stale items finish without output."""
        async with self._lock:
            admitted = await self._guard.admit(
                [(item.listing.listing_id, item.listing.listing_version) for item in items]
            )
            now, processed_at = time.monotonic(), utc_now_iso()
            worker_id, tracker = self._worker_id, self._tracker
            # Checked here, after the guard's round trip: items consumed before the tracker was reset
            # (exactly-once: partitions lost, transaction aborted) must not reach the next transaction.
            epoch = tracker.epoch
            records: list[tuple[bytes, bytes]] = []
            finished: dict[TopicPartitionKey, list[int]] = {}
            latency_ms: dict[float, float] = {}  # items consumed together share it
            for item, result, ok in zip(items, results, admitted, strict=True):
                if item.epoch != epoch:
                    continue  # read again from the committed offset
                source = item.source
                if not ok:
                    self._stale.inc()
                    tracker.finish((source.topic, source.partition), source.offset, epoch)
                    continue
                latency = latency_ms.get(item.consumed_at)
                if latency is None:
                    latency = latency_ms[item.consumed_at] = round(max(now - item.consumed_at, 0.0) * 1000, 3)
                listing = item.listing
                records.append((
                    listing.listing_id.encode(),
                    attribute_event(
                        listing, model=model, category_json=result.category_json,
                        attributes_json=result.attributes_json, cache_hit=cache_hit, latency_ms=latency,
                        worker_id=worker_id, processed_at=processed_at,
                    ),
                ))  # fmt: skip
                offsets = finished.get((source.topic, source.partition))
                if offsets is None:
                    offsets = finished[(source.topic, source.partition)] = []
                offsets.append(source.offset)
            await self._producer.produce_batch(
                self._topic, records, partial(self._delivered, finished, epoch),
                current=lambda: tracker.epoch == epoch,
            )  # fmt: skip

    def _delivered(self, finished: dict[TopicPartitionKey, list[int]], epoch: int) -> None:
        if epoch != self._tracker.epoch:
            return  # acknowledged into a transaction aborted since: not an output
        for tp, offsets in finished.items():
            self._tracker.finish_many(tp, offsets, epoch)
        self._metrics.events_out.inc(sum(len(offsets) for offsets in finished.values()))
