"""Cache -> infer -> decode for one micro-batch: `BatchEnricher.results_for(items)`.

Duplicates inside a batch (same cache key and token ids) are looked up and inferred once. Inference of
the misses is retried behind the circuit breaker until it succeeds (never dropped); while a batch waits,
`blocked` is > 0 and the stream worker pauses its partitions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.cache import ResultCache, unique_keys
from workers.config import FlowConfig
from workers.decode import ModelLabels, decode_attributes, decode_category
from workers.encode import EncodedText, TitleEncoder
from workers.events import Listing, SourceRecord
from workers.flow import Backoff, CircuitBreaker, retry_until_success
from workers.infer import InferenceBackend
from workers.metrics import WorkerMetrics
from workers.results import TokenSpanResult, ids_digest

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
    """One valid listing on its way through the pipeline."""

    source: SourceRecord
    listing: Listing
    encoded: EncodedText
    consumed_at: float


class BatchEnricher:
    """Results for a batch of work items: from the cache where possible, else from the backend."""

    def __init__(
        self, model: ServedModel, cache: ResultCache, backend: InferenceBackend, flow: FlowConfig,
        metrics: WorkerMetrics,
    ) -> None:  # fmt: skip
        self.model, self.backend, self._cache = model, backend, cache
        self.breaker = CircuitBreaker(
            flow.failure_threshold, flow.reset_after_s, on_state_change=metrics.set_circuit_state
        )
        self._backoff = Backoff(
            initial_s=flow.backoff_initial_s, max_s=max(flow.backoff_max_s, flow.backoff_initial_s)
        )
        self.blocked = 0

    async def results_for(self, items: list[WorkItem]) -> list[tuple[TokenSpanResult, bool]]:
        """(result, cache_hit) per item, in order."""
        digests = [ids_digest(item.encoded.ids) for item in items]
        keys = [self._cache.key_for(item.listing.title) for item in items]
        unique, index_map = unique_keys(keys)
        cached = [TokenSpanResult.from_bytes(v) if v else None for v in await self._cache.get_many(unique)]
        found: list[tuple[TokenSpanResult, bool] | None] = [None] * len(items)
        misses: dict[tuple[str, str], list[int]] = {}
        for i, digest in enumerate(digests):
            hit = cached[index_map[i]]
            if hit is not None and hit.digest == digest:  # same tokens: the spans fit this title
                found[i] = (hit, True)
            else:
                misses.setdefault((keys[i], digest), []).append(i)
        if misses:
            inferred = await self._infer([items[members[0]] for members in misses.values()])
            for members, result in zip(misses.values(), inferred, strict=True):
                for i in members:
                    found[i] = (result, False)
            await self._cache.put_many(
                [(key, r.to_bytes()) for (key, _), r in zip(misses, inferred, strict=True)]
            )
        return [pair for pair in found if pair is not None]

    async def _infer(self, items: list[WorkItem]) -> list[TokenSpanResult]:
        encoder, labels = self.model.encoder, self.model.labels
        input_ids, attention_mask = encoder.pad_to_bucket([item.encoded for item in items])
        outputs = await retry_until_success(
            lambda: self.backend.infer(input_ids, attention_mask),
            breaker=self.breaker,
            backoff=self._backoff,
            on_blocked=self._blocked,
            on_unblocked=self._unblocked,
        )
        results = []
        for row, item in enumerate(items):
            category, confidence = decode_category(outputs.category_probs[row], labels)
            attributes = decode_attributes(
                item.listing.title,
                item.encoded.offsets,
                outputs.tag_probs[row],
                labels,
                labels.attributes_by_category.get(category),
            )
            results.append(
                TokenSpanResult.from_attributes(
                    ids_digest(item.encoded.ids), category, confidence, attributes, item.encoded.offsets
                )
            )
        return results

    def _blocked(self) -> None:
        self.blocked += 1

    def _unblocked(self) -> None:
        self.blocked -= 1

    async def close(self) -> None:
        await self.backend.close()
        await self._cache.close()
