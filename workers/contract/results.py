"""The model's result for one title, kept as the JSON it is emitted as, and sealed to its title for the cache.

A result is serialised once, when it is decoded; the attribute event embeds those bytes (orjson
`Fragment`) and the cache stores them. The cache key hashes the exact title (see `workers.stages.cache`), so
a hit's character offsets fit the title that finds it and it is emitted as stored: no tokenizing,
decoding or JSON parsing on the hit path. Each cached value starts with a seal (a hash of the title and
the bytes that follow), so an entry that does not belong to this title — corrupted, truncated, or
written by something else — is a miss, never output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from workers.model.decode import Attribute
from workers.model.normalise import normalize

__all__ = ["ListingResult"]

_SEAL_BYTES = 8
# orjson writes compact JSON and escapes control characters inside strings: no raw newline in either part.
_SEPARATOR = b"\n"


def _seal(title: str, body: bytes) -> bytes:
    digest = hashlib.blake2b(title.encode("utf-8", "surrogatepass"), digest_size=_SEAL_BYTES)
    digest.update(body)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class ListingResult:
    """Category and attributes of one title as listing-attributes v1 JSON: `{"label", "confidence"}`
    and the list of attribute objects (name, value, confidence, start, end, source_field, normalized)."""

    category_json: bytes
    attributes_json: bytes

    @classmethod
    def from_decoded(
        cls,
        category: str,
        category_confidence: float,
        attributes: Sequence[Attribute],
        category_fields: Mapping[str, Any] | None = None,
    ) -> ListingResult:
        """``category_fields``: extra keys of the category object (``coverage``, ``unsupported_script``,
        ``unknown_tokens`` for a title the model cannot read; see ``workers.model.coverage``)."""
        label = {"label": category, "confidence": round(float(category_confidence), 6)}
        return cls(
            orjson.dumps({**label, **category_fields} if category_fields else label),
            orjson.dumps(
                [
                    {
                        "name": a.name,
                        "value": a.value,
                        "confidence": round(float(a.confidence), 6),
                        "start": a.start,
                        "end": a.end,
                        "source_field": "title",
                        "normalized": normalize(a.value).to_json(),
                    }
                    for a in attributes
                ]
            ),
        )

    @property
    def category(self) -> dict[str, Any]:
        return orjson.loads(self.category_json)

    @property
    def attributes(self) -> list[dict[str, Any]]:
        return orjson.loads(self.attributes_json)

    def to_bytes(self, title: str) -> bytes:
        """The cache value for `title`: seal, category JSON, newline, attributes JSON."""
        body = self.category_json + _SEPARATOR + self.attributes_json
        return _seal(title, body) + body

    @classmethod
    def from_bytes(cls, data: bytes, title: str) -> ListingResult | None:
        """The cached result for `title`, or None when the value was not sealed for `title` as it is."""
        body = data[_SEAL_BYTES:]
        if len(data) <= _SEAL_BYTES or data[:_SEAL_BYTES] != _seal(title, body):
            return None
        category_json, separator, attributes_json = body.partition(_SEPARATOR)
        if not separator:
            return None
        return cls(category_json, attributes_json)
