"""Infer -> decode for one micro-batch of cache misses: `BatchEnricher.infer(items)`.

Equal titles inside a batch are inferred once. Inference is retried behind the circuit breaker until it
succeeds (never dropped); while a batch waits, `blocked` is > 0 and the stream worker pauses its partitions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.config import FlowConfig
from workers.decode import ModelLabels, decode_attributes, decode_category
from workers.encode import EncodedText, TitleEncoder
from workers.events import Listing, SourceRecord
from workers.flow import Backoff, CircuitBreaker, retry_until_success
from workers.infer import InferenceBackend
from workers.metrics import WorkerMetrics
from workers.results import ListingResult

__all__ = ["BatchEnricher", "ServedModel", "WorkItem"]


@dataclass(frozen=True)
class ServedModel:
    """What the worker needs of a model directory: identity, tokenizer and label maps."""

    name: str
    version: str
    labels: ModelLabels
    encoder: TitleEncoder

    @classmethod
    def load(cls, model_dir: Path) -> ServedModel:
        info = json.loads((model_dir / "model_info.json").read_text(encoding="utf-8"))
        return cls(
            str(info["name"]),
            str(info["version"]),
            ModelLabels.from_file(model_dir / "labels.json"),
            TitleEncoder.from_model_dir(model_dir),
        )


@dataclass(slots=True)
class WorkItem:
    """One valid listing on its way through the pipeline; `encoded` is set only for cache misses."""

    source: SourceRecord
    listing: Listing
    consumed_at: float
    encoded: EncodedText | None = None


class BatchEnricher:
    """Results for a batch of cache misses from the inference backend."""

    def __init__(
        self, model: ServedModel, backend: InferenceBackend, flow: FlowConfig, metrics: WorkerMetrics
    ) -> None:
        self.model, self.backend = model, backend
        self.breaker = CircuitBreaker(
            flow.failure_threshold, flow.reset_after_s, on_state_change=metrics.set_circuit_state
        )
        self._backoff = Backoff(
            initial_s=flow.backoff_initial_s, max_s=max(flow.backoff_max_s, flow.backoff_initial_s)
        )
        self.blocked = 0

    async def infer(self, items: list[WorkItem]) -> list[ListingResult]:
        """One result per item, in order; items must carry `encoded` (their tokenized titles)."""
        first_of: dict[str, int] = {}
        unique: list[WorkItem] = []
        for item in items:
            if item.listing.title not in first_of:
                first_of[item.listing.title] = len(unique)
                unique.append(item)
        results = await self._infer_unique(unique)
        return [results[first_of[item.listing.title]] for item in items]

    async def _infer_unique(self, items: list[WorkItem]) -> list[ListingResult]:
        encoder, labels = self.model.encoder, self.model.labels
        encoded = [item.encoded for item in items]
        if any(enc is None for enc in encoded):
            raise ValueError("BatchEnricher.infer needs tokenized items (WorkItem.encoded)")
        input_ids, attention_mask = encoder.pad_to_bucket(encoded)  # type: ignore[arg-type]
        outputs = await retry_until_success(
            lambda: self.backend.infer(input_ids, attention_mask),
            breaker=self.breaker,
            backoff=self._backoff,
            on_blocked=self._blocked,
            on_unblocked=self._unblocked,
        )
        results = []
        for row, (item, enc) in enumerate(zip(items, encoded, strict=True)):
            category, confidence = decode_category(outputs.category_probs[row], labels)
            attributes = decode_attributes(
                item.listing.title,
                enc.offsets,  # type: ignore[union-attr]
                outputs.tag_probs[row],
                labels,
                labels.attributes_by_category.get(category),
            )
            results.append(ListingResult.from_decoded(category, confidence, attributes))
        return results

    def _blocked(self) -> None:
        self.blocked += 1

    def _unblocked(self) -> None:
        self.blocked -= 1

    async def close(self) -> None:
        await self.backend.close()
