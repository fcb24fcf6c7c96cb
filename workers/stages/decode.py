"""Decode stage: the model's probabilities for one batch -> one `ListingResult` per item.

The span and category decoding itself (constrained Viterbi, character offsets) lives in
`workers.model.decode`, shared with training's evaluation so the metric measures what is served. With a
`CoverageCheck` the confidences of a title the model cannot read (a script absent from its training
titles, mostly [UNK] tokens) are scaled down and the category is flagged (`workers.model.coverage`).
"""

from __future__ import annotations

from workers.backends import ModelOutputs
from workers.contract.results import ListingResult
from workers.model.coverage import CoverageCheck
from workers.model.decode import ModelLabels, decode_attributes, decode_category
from workers.stages.item import WorkItem

__all__ = ["decode_batch"]


def decode_batch(
    items: list[WorkItem],
    outputs: ModelOutputs,
    labels: ModelLabels,
    coverage: CoverageCheck | None = None,
) -> list[ListingResult]:
    """Row `i` of `outputs` belongs to `items[i]`, which must carry its tokenized title (`encoded`)."""
    results = []
    for row, item in enumerate(items):
        encoded = item.encoded
        assert encoded is not None, "decode_batch needs tokenized items"
        title = item.listing.title
        category, confidence = decode_category(outputs.category_probs[row], labels)
        allowed = labels.attributes_by_category.get(category)
        attributes = decode_attributes(title, encoded.offsets, outputs.tag_probs[row], labels, allowed)
        if coverage is None:
            results.append(ListingResult.from_decoded(category, confidence, attributes))
            continue
        measured = coverage.measure(title, encoded)
        confidence, attributes = measured.cap(confidence, attributes)
        results.append(
            ListingResult.from_decoded(category, confidence, attributes, measured.category_fields())
        )
    return results
