"""What flows through the stages: a valid listing, where it came from, and (misses only) its tokens."""

from __future__ import annotations

from dataclasses import dataclass

from workers.contract.events import Listing, SourceRecord
from workers.model.encode import EncodedText

__all__ = ["WorkItem"]


@dataclass(slots=True)
class WorkItem:
    """One valid listing on its way through the pipeline; `encoded` is set only for cache misses, with
    `model_digest`, the digest of the model that tokenized it (a batch must hold one model's items).
    `epoch`: the offset tracker's when consumed; an item of an older one is dropped (see `OffsetTracker`)."""

    source: SourceRecord
    listing: Listing
    consumed_at: float
    encoded: EncodedText | None = None
    epoch: int = 0
    model_digest: str = ""
