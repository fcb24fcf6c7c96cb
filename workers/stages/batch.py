"""Batch stage: micro-batches by size and time window, one queue per fixed sequence-length bucket.

A batch is released when it holds `max_batch` items or when its oldest item has waited `max_wait_s`.
All items of one batch share a bucket, so padding them gives the same [B, S] shape the served model
expects and Triton's dynamic batcher can merge requests of equal S from several batches. A bucket is any
hashable key: a canary's items are keyed by (candidate digest, length) so they never share a batch with
the active model's (`workers.stages.trial.batch_key`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batch", "MicroBatcher"]

T = TypeVar("T")


@dataclass
class Batch(Generic[T]):
    """Items for one inference call; `bucket` is their key (padded sequence length, and model)."""

    bucket: Hashable
    items: list[T] = field(default_factory=list)
    opened_at: float = 0.0

    def __len__(self) -> int:
        return len(self.items)


class MicroBatcher(Generic[T]):
    """Collects items per bucket; `add` returns full batches, `due` the ones whose time window is over."""

    def __init__(
        self, max_batch: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._open: dict[Hashable, Batch[T]] = {}

    def add(self, item: T, bucket: Hashable) -> Batch[T] | None:
        """Queue `item` in its bucket; returns that bucket's batch when it just became full."""
        batch = self._open.get(bucket)
        if batch is None:
            batch = self._open[bucket] = Batch(bucket, [], self._clock())
        batch.items.append(item)
        if len(batch.items) >= self.max_batch:
            del self._open[bucket]
            return batch
        return None

    def due(self) -> list[Batch[T]]:
        """Batches whose oldest item has waited `max_wait_s` (removed from the batcher)."""
        now = self._clock()
        ready = [b for b in self._open.values() if now - b.opened_at >= self.max_wait_s]
        for batch in ready:
            del self._open[batch.bucket]
        return ready

    def seconds_until_due(self) -> float | None:
        """Time until the next batch is due (0 when one already is); None when nothing is waiting."""
        if not self._open:
            return None
        oldest = min(b.opened_at for b in self._open.values())
        return max(0.0, oldest + self.max_wait_s - self._clock())

    def drain(self) -> list[Batch[T]]:
        """Every open batch, however small (shutdown, rebalance, checkpoint)."""
        batches = list(self._open.values())
        self._open.clear()
        return batches

    def __len__(self) -> int:
        """Items waiting in open batches."""
        return sum(len(b.items) for b in self._open.values())
