"""The one job every peer runs, so only the stream framework differs between them and our worker.

A batch of parsed listings -> the project's tokenizer (`TitleEncoder`) -> the project's Triton client
(`TritonBackend`, the same gRPC calls, timeout and in-flight semaphore as the worker) -> the project's
decoder (`decode_batch`) -> listing-attributes v1 events (`attribute_event`). Settings come from the same
ENRICH_* variables as `enrich worker` (`load_config`), so a pass configures every contestant alike.

What a peer does NOT do that our worker does (each costs the worker CPU, none helps it): schema
validation and dead-lettering, the Redis result cache (off in the peers pass anyway), the stale-update
guard, per-bucket batching, offset tracking that commits only acknowledged output.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.backends import TritonBackend
from workers.contract.events import Listing, SourceRecord, attribute_event, utc_now_iso
from workers.model.served import ServedModel
from workers.runtime.config import WorkerConfig, load_config
from workers.stages.decode import decode_batch
from workers.stages.item import WorkItem

__all__ = ["EnrichJob"]

_NO_SOURCE = SourceRecord("", 0, 0, None)


@dataclass
class EnrichJob:
    """Listings in, (key, attribute event) pairs out; async for asyncio frameworks, blocking for the rest."""

    config: WorkerConfig
    served: ServedModel
    worker_id: str

    @classmethod
    def from_env(cls, worker_id: str, env: Mapping[str, str] | None = None) -> EnrichJob:
        config = load_config(None, env)
        if config.backend.model_dir is None:
            raise SystemExit("ENRICH_MODEL_DIR must name the exported model the Triton server serves")
        return cls(config, ServedModel.load(Path(config.backend.model_dir)), worker_id)

    def __post_init__(self) -> None:
        self._local = threading.local()  # a gRPC aio channel belongs to one event loop: one per thread

    def backend(self) -> TritonBackend:
        """This thread's (or this event loop's) Triton client, made on first use."""
        backend = getattr(self._local, "backend", None)
        if backend is None:
            backend = self._local.backend = TritonBackend(
                self.config.backend.triton_url, self.config.backend.triton_model,
                max_in_flight=self.config.batch.max_in_flight, timeout_s=self.config.backend.timeout_s,
            )  # fmt: skip
        return backend

    async def enrich(self, listings: Sequence[Mapping[str, Any]]) -> list[tuple[bytes, bytes]]:
        """One inference call for the whole batch, padded to the bucket of its longest title."""
        if not listings:
            return []
        items = [WorkItem(_NO_SOURCE, Listing(**{k: d[k] for k in Listing._fields if k in d}), 0.0)
                 for d in listings]  # fmt: skip
        encoder = self.served.encoder
        for item, encoded in zip(items, encoder.encode([i.listing.title for i in items]), strict=True):
            item.encoded = encoded
        outputs = await self.backend().infer(*encoder.pad_to_bucket([i.encoded for i in items]))  # type: ignore[misc]
        model = {"name": self.served.name, "version": self.served.version}
        processed_at = utc_now_iso()
        results = decode_batch(items, outputs, self.served.labels, self.served.coverage)  # as the worker does
        return [
            (item.listing.listing_id.encode(), attribute_event(
                item.listing, model=model, category_json=result.category_json,
                attributes_json=result.attributes_json, cache_hit=False, latency_ms=0.0,
                worker_id=self.worker_id, processed_at=processed_at))
            for item, result in zip(items, results, strict=True)
        ]  # fmt: skip

    def enrich_blocking(self, listings: Sequence[Mapping[str, Any]]) -> list[tuple[bytes, bytes]]:
        """`enrich` for a synchronous framework: this thread's own event loop, kept between calls."""
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = asyncio.Runner()
        return runner.run(self.enrich(listings))
