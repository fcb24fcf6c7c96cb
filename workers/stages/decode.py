"""Decode stage: the model's probabilities for one batch -> one `ListingResult` per item.

The span and category decoding itself (constrained Viterbi, character offsets) lives in
`workers.model.decode`, shared with training's evaluation so the metric measures what is served;
`decode_title` is the one step per title that the worker and `enrich predict` both run; it corrects the
spans with the model's known values (`workers.model.lexicon`). With a
`CoverageCheck` the confidences of a title the model cannot read (a script absent from its training
titles, mostly [UNK] tokens) are scaled down and the category is flagged (`workers.model.coverage`).
"""

from __future__ import annotations

import numpy as np

from workers.backends import ModelOutputs
from workers.contract.results import ListingResult
from workers.model.coverage import CoverageCheck
from workers.model.decode import ModelLabels, decode_listing
from workers.model.encode import EncodedText
from workers.stages.item import WorkItem

__all__ = ["decode_batch", "decode_title"]


def decode_title(
    title: str,
    encoded: EncodedText,
    tag_probs: np.ndarray,
    category_probs: np.ndarray,
    labels: ModelLabels,
    coverage: CoverageCheck | None = None,
) -> ListingResult:
    """Category, then the attributes valid for it, as the emitted JSON (normalised values included);
    confidences capped by the title's coverage when the model records its training scripts."""
    category, confidence, attributes = decode_listing(
        title, encoded.offsets, tag_probs, category_probs, labels, lexicon=labels.lexicon
    )
    if coverage is None:
        return ListingResult.from_decoded(category, confidence, attributes)
    measured = coverage.measure(title, encoded)
    confidence, attributes = measured.cap(confidence, attributes)
    return ListingResult.from_decoded(category, confidence, attributes, measured.category_fields())


def decode_batch(
    items: list[WorkItem],
    outputs: ModelOutputs,
    labels: ModelLabels,
    coverage: CoverageCheck | None = None,
) -> list[ListingResult]:
    """Row `i` of `outputs` belongs to `items[i]`, which must carry its tokenized title (`encoded`)."""
    return [
        decode_title(
            item.listing.title,
            item.encoded,  # type: ignore[arg-type]
            outputs.tag_probs[row],
            outputs.category_probs[row],
            labels,
            coverage,
        )
        for row, item in enumerate(items)
    ]
