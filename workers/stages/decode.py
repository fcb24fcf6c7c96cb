"""Decode stage: the model's probabilities for one batch -> one `ListingResult` per item.

The span and category decoding itself (constrained Viterbi, character offsets) lives in
`workers.model.decode`, shared with training's evaluation so the metric measures what is served.
"""

from __future__ import annotations

from workers.backends import ModelOutputs
from workers.contract.results import ListingResult
from workers.model.decode import ModelLabels, decode_attributes, decode_category
from workers.stages.item import WorkItem

__all__ = ["decode_batch"]


def decode_batch(items: list[WorkItem], outputs: ModelOutputs, labels: ModelLabels) -> list[ListingResult]:
    """Row `i` of `outputs` belongs to `items[i]`, which must carry its tokenized title (`encoded`)."""
    results = []
    for row, item in enumerate(items):
        category, confidence = decode_category(outputs.category_probs[row], labels)
        attributes = decode_attributes(
            item.listing.title,
            item.encoded.offsets,  # type: ignore[union-attr]
            outputs.tag_probs[row],
            labels,
            labels.attributes_by_category.get(category),
        )
        results.append(ListingResult.from_decoded(category, confidence, attributes))
    return results
