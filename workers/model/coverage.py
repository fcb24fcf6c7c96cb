"""How much of a title the served model can read: letters in scripts it was trained on, tokens it knows.

A model trained on English titles reads a Chinese title as a row of [UNK] tokens (all-MiniLM-L6-v2's
WordPiece vocabulary has 246 Han characters, most of them Japanese kanji; a tiny tokenizer trained on
English titles has none) and still answers with a softmax: a category at 0.9 and attribute spans over
[UNK]s. Those confidences say nothing. The worker multiplies them by the title's coverage — the smaller of
(share of letters in a script the model saw in training) and (share of tokens that are not [UNK]) — and
flags the category when the title is mostly outside what the model read in training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.model.decode import Attribute
from workers.model.encode import EncodedText
from workers.model.scripts import seen_share

__all__ = ["FULL_COVERAGE", "Coverage", "CoverageCheck"]

MOSTLY = 0.5  # below this share a title is "mostly" unreadable: flagged, not only scaled
SEEN_SCRIPT_MIN_SHARE = 0.01  # a script under 1% of the training letters (a stray µ or é) counts as unseen


@dataclass(frozen=True, slots=True)
class Coverage:
    """``script_share``: letters in seen scripts / letters; ``known_share``: non-[UNK] / content tokens."""

    script_share: float
    known_share: float

    @property
    def factor(self) -> float:
        return min(self.script_share, self.known_share)

    def category_fields(self) -> dict[str, Any]:
        """Extra keys of the emitted category object; none for a title the model fully reads."""
        if self.factor >= 1.0:
            return {}
        fields: dict[str, Any] = {"coverage": round(self.factor, 6)}
        if self.script_share < MOSTLY:
            fields["unsupported_script"] = True
        if self.known_share < MOSTLY:
            fields["unknown_tokens"] = True
        return fields

    def cap(
        self, category_confidence: float, attributes: Sequence[Attribute]
    ) -> tuple[float, list[Attribute]]:
        """Category confidence and attributes with every confidence multiplied by :attr:`factor`."""
        factor = self.factor
        if factor >= 1.0:
            return category_confidence, list(attributes)
        capped = [dataclasses.replace(a, confidence=a.confidence * factor) for a in attributes]
        return category_confidence * factor, capped


FULL_COVERAGE = Coverage(1.0, 1.0)


@dataclass(frozen=True)
class CoverageCheck:
    """Measures a title's :class:`Coverage` for one served model.

    ``seen_scripts`` None: the model directory does not record its training scripts (exported before
    they were recorded), so scripts are not judged; ``unk_id`` None: the tokenizer has no unknown token.
    """

    seen_scripts: frozenset[str] | None
    unk_id: int | None

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], unk_id: int | None) -> CoverageCheck:
        scripts = info.get("training_scripts")
        if not scripts:  # absent or empty: not recorded, so not judged (never "every script is unseen")
            return cls(None, unk_id)
        seen = frozenset(name for name, share in scripts.items() if share >= SEEN_SCRIPT_MIN_SHARE)
        return cls(seen, unk_id)

    def measure(self, text: str, encoded: EncodedText) -> Coverage:
        """``text``'s coverage; ``encoded`` is its tokenization (its ``unknown`` count of [UNK] tokens)."""
        script = 1.0 if self.seen_scripts is None else seen_share(text, self.seen_scripts)
        known = 1.0
        if encoded.unknown and self.unk_id is not None:
            content = sum(1 for start, end in encoded.offsets if end > start)
            known = 1.0 - encoded.unknown / max(content, encoded.unknown)
        return Coverage(script, known)
