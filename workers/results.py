"""Model results as they are cached: spans in token positions, so a hit re-anchors on the current text.

The cache key hashes the *normalised* text (case and whitespace folded), so a hit may come from a title
that differs in case or spacing, and its character offsets would not fit. The cached value therefore
keeps token positions plus a digest of the token ids: when the current title tokenizes to the same ids,
the spans map to exact character offsets of the current title through its own offset mapping — the same
numbers decoding would have produced. When the ids differ, it is treated as a miss.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from workers.decode import Attribute

__all__ = ["TokenSpanResult", "ids_digest"]


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class TokenSpanResult:
    """Category and attributes of one title; attribute spans as (first_token, last_token) inclusive."""

    digest: str
    category: str
    category_confidence: float
    spans: tuple[tuple[str, float, int, int], ...]

    @classmethod
    def from_attributes(
        cls,
        digest: str,
        category: str,
        category_confidence: float,
        attributes: Sequence[Attribute],
        offsets: Sequence[tuple[int, int]],
    ) -> TokenSpanResult:
        first_token = {}
        last_token = {}
        for index, (start, end) in enumerate(offsets):
            if end > start:
                first_token.setdefault(start, index)
                last_token[end] = index
        spans = tuple(
            (a.name, float(a.confidence), first_token[a.start], last_token[a.end]) for a in attributes
        )
        return cls(digest, category, float(category_confidence), spans)

    def attributes_for(self, text: str, offsets: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """listing-attributes v1 attribute dicts anchored on `text` (whose tokens have `offsets`)."""
        found = []
        for name, confidence, first, last in self.spans:
            start, end = offsets[first][0], offsets[last][1]
            found.append(
                {
                    "name": name,
                    "value": text[start:end],
                    "confidence": round(confidence, 6),
                    "start": start,
                    "end": end,
                    "source_field": "title",
                }
            )
        return found

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"d": self.digest, "c": [self.category, self.category_confidence], "s": list(self.spans)}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenSpanResult | None:
        """The cached result, or None when the entry is unreadable (then it counts as a miss)."""
        try:
            raw = orjson.loads(data)
            return cls(
                raw["d"],
                raw["c"][0],
                float(raw["c"][1]),
                tuple((s[0], float(s[1]), int(s[2]), int(s[3])) for s in raw["s"]),
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            return None
