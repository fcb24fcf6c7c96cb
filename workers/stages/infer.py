"""Infer stage: one micro-batch of cache misses -> the backend (retried, never dropped) -> `decode_batch`.

Equal titles inside a batch are inferred once. The model and backend come with each batch (its `Serving`,
captured when the batch was launched), so a hot swap never changes the model under a batch. Inference is
retried behind the circuit breaker until it succeeds (never dropped); while a batch waits, `blocked` is
> 0 and the stream worker pauses its partitions.
"""

from __future__ import annotations

from workers.contract.results import ListingResult
from workers.runtime.config import FlowConfig
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.resilience import Backoff, CircuitBreaker, retry_until_success
from workers.stages.decode import decode_batch
from workers.stages.item import WorkItem
from workers.stages.serving import Serving

__all__ = ["BatchEnricher"]


class BatchEnricher:
    """Results for a batch of cache misses from its model's backend; one breaker for all models."""

    def __init__(self, flow: FlowConfig, metrics: WorkerMetrics) -> None:
        self._shapes = metrics.batch_shapes
        self.breaker = CircuitBreaker(
            flow.failure_threshold, flow.reset_after_s, on_state_change=metrics.set_circuit_state
        )
        self._backoff = Backoff(
            initial_s=flow.backoff_initial_s, max_s=max(flow.backoff_max_s, flow.backoff_initial_s)
        )
        self.blocked = 0

    async def infer(self, items: list[WorkItem], serving: Serving) -> list[ListingResult]:
        """One result per item, in order; items must carry `encoded` (tokenized by `serving.model`)."""
        first_of: dict[str, int] = {}
        unique: list[WorkItem] = []
        for item in items:
            if item.listing.title not in first_of:
                first_of[item.listing.title] = len(unique)
                unique.append(item)
        results = await self._infer_unique(unique, serving)
        return [results[first_of[item.listing.title]] for item in items]

    async def _infer_unique(self, items: list[WorkItem], serving: Serving) -> list[ListingResult]:
        encoder, backend = serving.model.encoder, serving.backend
        encoded = [item.encoded for item in items]
        if any(enc is None for enc in encoded):
            raise ValueError("BatchEnricher.infer needs tokenized items (WorkItem.encoded)")
        input_ids, attention_mask = encoder.pad_to_bucket(encoded)  # type: ignore[arg-type]
        outputs = await retry_until_success(
            lambda: backend.infer(input_ids, attention_mask),
            breaker=self.breaker,
            backoff=self._backoff,
            on_blocked=self._blocked,
            on_unblocked=self._unblocked,
        )
        self._shapes.labels(rows=str(input_ids.shape[0]), seq=str(input_ids.shape[1])).inc()
        return decode_batch(items, outputs, serving.model.labels, serving.model.coverage)

    def _blocked(self) -> None:
        self.blocked += 1

    def _unblocked(self) -> None:
        self.blocked -= 1
