"""Shadow: the candidate model runs on a sample of the live listings next to the active model, and what both
answered goes to the shadow topic (`ENRICH_SHADOW_TOPIC`, default `listings.attributes.shadow`).

The worker hands every batch it has just published (cache hits and inferred misses, with the active
results) to `ShadowRunner.observe`, which returns at once: the sampled listings (`in_sample` of their id)
are tokenized, inferred and decoded by the candidate in a task of their own, so the active output is never
waited for and never changed. Nothing of the candidate touches the output topic or any cache. At most
`max_in_flight` shadow tasks run at once; a sample arriving while they do is skipped and counted
(`enrich_shadow_skipped_total{reason="busy"}`): a slow candidate costs comparisons, never throughput. A
candidate that fails or a record that is not delivered is counted too (`failed`, `undelivered`): the shadow
is an experiment, it never stops the worker.

Shadow records are produced by a plain producer of their own (not the worker's, which may be
transactional), keyed by listing id, one JSON object per listing:

    {"group", "listing_id", "listing_version", "title", "worker_id", "compared_at",
     "active":    {"model": {name, version, digest}, "category", "attributes", "cache_hit", "latency_ms"},
     "candidate": {"model": {...}, "category", "attributes", "latency_ms"},
     "agreement": {"category": true|false,
                   "attributes": {"<name>": "equal|differ|only_active|only_candidate"}}}

`latency_ms` is the inference time of the batch the listing was in (None for the active side's cache
hits); the candidate's batches are the sample only, so they are smaller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, Counter, Histogram

from workers.contract.events import utc_now_iso
from workers.contract.results import ListingResult
from workers.runtime.kafka_security import client_config
from workers.stages.agreement import compare
from workers.stages.decode import decode_title
from workers.stages.item import WorkItem
from workers.stages.serving import Serving
from workers.stages.trial import in_sample, timed

__all__ = ["ShadowRunner", "TrialMetrics"]

log = logging.getLogger(__name__)

_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class TrialMetrics:
    """Shadow and canary metrics on the worker's registry, labelled by the candidate's digest."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r, c = registry, ["candidate"]
        self.compared = Counter("enrich_shadow_compared", "Listings compared by the shadow candidate", c,
                                registry=r)  # fmt: skip
        self.category = Counter("enrich_shadow_category", "Shadow listings by category outcome (agree, "
                                "differ)", [*c, "outcome"], registry=r)  # fmt: skip
        self.attributes = Counter(
            "enrich_shadow_attributes", "Shadow listings per attribute and outcome "
            "(equal, differ, only_active, only_candidate)", [*c, "attribute", "outcome"], registry=r,
        )  # fmt: skip
        self.confidence = Histogram("enrich_shadow_confidence", "Category confidence of shadowed listings",
                                    [*c, "side"], buckets=_CONFIDENCE_BUCKETS, registry=r)  # fmt: skip
        self.latency = Histogram("enrich_shadow_latency_seconds", "Candidate inference time per shadow "
                                 "batch", c, buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.skipped = Counter("enrich_shadow_skipped", "Sampled listings not compared (busy, failed, "
                               "undelivered)", [*c, "reason"], registry=r)  # fmt: skip
        self.canary = Counter("enrich_canary_listings", "Listings served by the canary candidate", c,
                              registry=r)  # fmt: skip


class ShadowRunner:
    """Runs one shadow candidate beside the active model; `observe` is the worker's hook (`Trial.shadow`)."""

    def __init__(
        self, *, candidate: Serving, fraction: float, topic: str, group: str, worker_id: str,
        bootstrap: str, properties: Mapping[str, str] | None, metrics: TrialMetrics, max_in_flight: int,
        max_batch: int,
    ) -> None:  # fmt: skip
        self.candidate, self.fraction, self.topic = candidate, fraction, topic
        self._group, self._worker_id, self._metrics = group, worker_id, metrics
        self._max_in_flight, self._max_batch = max(1, max_in_flight), max(1, max_batch)
        self._label = candidate.digest
        self._producer = Producer(client_config(bootstrap, {"linger.ms": 50, "acks": "all"}, properties))
        self._tasks: set[asyncio.Task[None]] = set()

    def observe(
        self, items: list[WorkItem], results: list[ListingResult], active: Serving, infer_s: float | None
    ) -> None:
        """The active model published `results` for `items`: start the candidate on their sample."""
        if active is self.candidate:
            return
        fraction = self.fraction
        sample = [
            (i, r) for i, r in zip(items, results, strict=True) if in_sample(i.listing.listing_id, fraction)
        ]
        if not sample:
            return
        if len(self._tasks) >= self._max_in_flight:
            self._metrics.skipped.labels(self._label, "busy").inc(len(sample))
            return
        latency_ms = None if infer_s is None else round(infer_s * 1000, 3)
        self.candidate.enter()  # the follower closes the candidate's backend only after this
        task = asyncio.get_running_loop().create_task(self._run(sample, active, latency_ms))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.candidate.leave()

    async def _run(
        self, sample: list[tuple[WorkItem, ListingResult]], active: Serving, active_ms: float | None
    ) -> None:
        for start in range(0, len(sample), self._max_batch):
            part = sample[start : start + self._max_batch]
            try:
                results, seconds = await timed(self._infer([item.listing.title for item, _ in part]))
            except Exception as exc:  # the candidate's failure is the experiment's, never the stream's
                self._metrics.skipped.labels(self._label, "failed").inc(len(part))
                log.warning("shadow candidate %s failed on %d listings: %r",
                            self.candidate.model.short_digest, len(part), exc)  # fmt: skip
                continue
            self._metrics.latency.labels(self._label).observe(seconds)
            self._publish(part, results, active, active_ms, round(seconds * 1000, 3))

    async def _infer(self, titles: list[str]) -> list[ListingResult]:
        model = self.candidate.model
        encoded = model.encoder.encode(titles)
        input_ids, attention_mask = model.encoder.pad_to_bucket(encoded)
        outputs = await self.candidate.backend.infer(input_ids, attention_mask)
        tags, categories = outputs.tag_probs, outputs.category_probs
        return [
            decode_title(title, enc, tags[row], categories[row], model.labels, model.coverage)
            for row, (title, enc) in enumerate(zip(titles, encoded, strict=True))
        ]

    def _publish(
        self, part: list[tuple[WorkItem, ListingResult]], results: list[ListingResult], active: Serving,
        active_ms: float | None, candidate_ms: float,
    ) -> None:  # fmt: skip
        metrics, label, now = self._metrics, self._label, utc_now_iso()
        for (item, mine), theirs in zip(part, results, strict=True):
            a_cat, c_cat = orjson.loads(mine.category_json), orjson.loads(theirs.category_json)
            comparison = compare(a_cat, orjson.loads(mine.attributes_json), c_cat,
                                 orjson.loads(theirs.attributes_json))  # fmt: skip
            metrics.compared.labels(label).inc()
            metrics.category.labels(label, "agree" if comparison.category_agrees else "differ").inc()
            for name, outcome in comparison.attributes.items():
                metrics.attributes.labels(label, name, outcome).inc()
            metrics.confidence.labels(label, "active").observe(float(a_cat.get("confidence", 0.0)))
            metrics.confidence.labels(label, "candidate").observe(float(c_cat.get("confidence", 0.0)))
            listing = item.listing
            record: dict[str, Any] = {
                "group": self._group, "listing_id": listing.listing_id,
                "listing_version": listing.listing_version, "title": listing.title,
                "worker_id": self._worker_id, "compared_at": now,
                "active": _side(active, mine, active_ms, cache_hit=active_ms is None),
                "candidate": _side(self.candidate, theirs, candidate_ms),
                "agreement": {"category": comparison.category_agrees, "attributes": comparison.attributes},
            }  # fmt: skip
            try:
                self._producer.produce(self.topic, orjson.dumps(record), listing.listing_id.encode(),
                                       on_delivery=self._delivered)  # fmt: skip
            except BufferError:  # librdkafka's queue is full: a sample is not worth waiting for
                metrics.skipped.labels(label, "undelivered").inc()
        self._producer.poll(0)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._metrics.skipped.labels(self._label, "undelivered").inc()
            log.warning("shadow record not delivered to %s: %s", self.topic, err)

    async def close(self) -> None:
        """Let the shadow tasks finish, deliver what they produced (bounded), close the producer."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await asyncio.to_thread(self._producer.flush, 5.0)


def _side(serving: Serving, result: ListingResult, latency_ms: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "model": serving.identity, "category": orjson.Fragment(result.category_json),
        "attributes": orjson.Fragment(result.attributes_json), **extra, "latency_ms": latency_ms,
    }  # fmt: skip
