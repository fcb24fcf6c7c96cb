"""A candidate model tried next to the model in force: which listings it sees, and which model a batch is for.

`enrich rollout shadow|canary` (see `workers.rollout_trial`) puts a `CandidateModel` on the control topic;
the worker's `TrialFollower` (`workers.runtime.trial_follow`) builds its `Serving` and sets a `Trial`.

- **Sampling** is by a hash of the listing id, not by chance: `sample_point` maps an id to [0, 1) the same
  way in every process and every run (blake2b, not Python's salted `hash`), so a shadow compares the same
  listings every time, and in a canary a listing sticks to one model (both at the same fraction pick the
  same listings; a larger fraction picks a superset).
- **Canary routing** (`Trial.route`): a chunk is split into the active model's part and the candidate's
  part before the cache lookup; each part is looked up in its own model's cache namespace, tokenized by its
  own tokenizer and batched under its own batcher key (`batch_key`), so no batch mixes models.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from workers.contract.results import ListingResult
from workers.stages.item import WorkItem
from workers.stages.serving import Serving

__all__ = ["CANARY", "SHADOW", "ShadowHook", "Trial", "batch_key", "in_sample", "sample_point", "serving_for",
           "timed"]  # fmt: skip

SHADOW, CANARY = "shadow", "canary"
_SCALE = float(1 << 64)
T = TypeVar("T")
# (items, the active model's results, the active Serving, its inference seconds or None for cache hits)
ShadowHook = Callable[[list[WorkItem], list[ListingResult], Serving, float | None], None]


def sample_point(listing_id: str) -> float:
    """Where `listing_id` falls in [0, 1): the first 8 bytes of its blake2b hash, as a fraction."""
    digest = hashlib.blake2b(listing_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def in_sample(listing_id: str, fraction: float) -> bool:
    """Whether the listing belongs to a sample of `fraction` (0: none, 1: all)."""
    return fraction > 0 and sample_point(listing_id) < fraction


@dataclass(frozen=True, eq=False)
class Trial:
    """The candidate in force: `mode` SHADOW or CANARY, the `fraction` of listings it sees, its `Serving`;
    `on_routed(n)` counts the listings a canary sends it; `shadow` (shadow mode) is handed every batch the
    active model published, and runs the candidate on its sample without the caller waiting."""

    mode: str
    fraction: float
    serving: Serving
    on_routed: Callable[[int], None] | None = None
    shadow: ShadowHook | None = None

    @property
    def describe(self) -> str:
        return f"{self.mode} {self.serving.model.short_digest} {self.fraction:g}"

    def route(self, items: list[WorkItem], active: Serving) -> list[tuple[Serving, list[WorkItem]]]:
        """A canary's split of a chunk: (model, its items), in the chunk's order within each part."""
        if self.mode != CANARY:
            return [(active, items)]
        fraction = self.fraction
        mine = [item for item in items if in_sample(item.listing.listing_id, fraction)]
        if not mine:
            return [(active, items)]
        if self.on_routed is not None:
            self.on_routed(len(mine))
        picked = {id(item) for item in mine}
        rest = [item for item in items if id(item) not in picked]
        return [(active, rest), (self.serving, mine)] if rest else [(self.serving, mine)]


def batch_key(serving: Serving, active: Serving, bucket: int) -> Hashable:
    """The micro-batcher key of an item: its sequence bucket, and for a candidate's item its digest too."""
    return bucket if serving is active else (serving.digest, bucket)


def serving_for(item: WorkItem, active: Serving, trial: Trial | None) -> Serving:
    """The model a batch holding `item` is for: the one that tokenized it (`WorkItem.model_digest`)."""
    if trial is not None and item.model_digest == trial.serving.digest:
        return trial.serving
    return active


async def timed(work: Awaitable[T]) -> tuple[T, float]:
    """`work`'s result and how long it took (s)."""
    started = time.perf_counter()
    result = await work
    return result, time.perf_counter() - started
