"""Decode stage: the model's probabilities for one batch -> one `ListingResult` per item.

The span and category decoding itself (constrained Viterbi, character offsets) lives in
`workers.model.decode`, shared with training's evaluation so the metric measures what is served;
`decode_title` is the one step per title that the worker and `enrich predict` both run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workers.backends import ModelOutputs
from workers.contract.results import ListingResult
from workers.model.decode import ModelLabels, decode_attributes, decode_category
from workers.stages.item import WorkItem

__all__ = ["decode_batch", "decode_title"]


def decode_title(
    title: str,
    offsets: Sequence[tuple[int, int]],
    tag_probs: np.ndarray,
    category_probs: np.ndarray,
    labels: ModelLabels,
) -> ListingResult:
    """Category, then the attributes valid for it, as the emitted JSON (normalised values included)."""
    category, confidence = decode_category(category_probs, labels)
    attributes = decode_attributes(
        title, offsets, tag_probs, labels, labels.attributes_by_category.get(category)
    )
    return ListingResult.from_decoded(category, confidence, attributes)


def decode_batch(items: list[WorkItem], outputs: ModelOutputs, labels: ModelLabels) -> list[ListingResult]:
    """Row `i` of `outputs` belongs to `items[i]`, which must carry its tokenized title (`encoded`)."""
    return [
        decode_title(
            item.listing.title,
            item.encoded.offsets,  # type: ignore[union-attr]
            outputs.tag_probs[row],
            outputs.category_probs[row],
            labels,
        )
        for row, item in enumerate(items)
    ]
