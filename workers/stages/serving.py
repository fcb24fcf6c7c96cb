"""The model in force: the served model (tokenizer, label maps, identity), the backend that runs it and the
cache namespace of its results, as one value.

A hot swap (`workers.runtime.model_swap`) replaces the worker's `Serving` between batches. Every batch
captures the `Serving` it was tokenized with when it is launched, so it is inferred by that model's
backend, cached under that model's digest and emitted with that model's identity, whatever the worker
runs by the time the batch finishes. `wait_idle` lets the swap close the old backend only after its last
batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from workers.backends import InferenceBackend
from workers.model.served import ServedModel
from workers.stages.cache import ResultCache

__all__ = ["Serving"]


@dataclass(eq=False)
class Serving:
    """One model with its backend and cache; `triton_version` is "" unless pinned (see `enrich rollout`)."""

    model: ServedModel
    backend: InferenceBackend
    cache: ResultCache
    triton_version: str = ""
    _batches: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()
        # Built once: every event of this model carries the same identity object.
        self.identity = {"name": self.model.name, "version": self.model.version, "digest": self.model.digest}

    @property
    def digest(self) -> str:
        return self.model.digest

    def enter(self) -> None:
        """A batch starts on this model."""
        self._batches += 1
        self._idle.clear()

    def leave(self) -> None:
        """That batch is finished (emitted, or failed)."""
        self._batches -= 1
        if self._batches == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until no batch runs on this model (the caller makes sure no new one starts)."""
        await self._idle.wait()
