"""Known values: the attribute values of a model's training titles, used as a lexicon after decoding.

Why: half of the model's errors are span boundaries ("Oxford" for "Wing-Tip Oxford"), and a value seen in
training is strong evidence for its own boundaries; and some attributes are left empty although a value
seen several times stands in the title ("Organic", "Vegan"). Cross-validated on OA-Mine (`enrich
cv-decode`, the lexicon of each fold learned from that fold's training side only) both steps raised
micro-F1; see README "Model and data". Two rules, applied in this order:

1. widen: a predicted span that is not a known value, inside a longer known value of the same attribute
   standing in the title as whole words, becomes that value (the title's own spelling);
2. fill: an attribute allowed for the predicted category that the model left empty gets the longest value
   seen at least ``FILL_MIN_COUNT`` times in training that stands in the title as whole words and overlaps
   no predicted span, at confidence ``FILL_CONFIDENCE`` (a lexicon match, not the model's belief).

The values travel inside ``labels.json`` (``known_values``), so they are part of the model's digest;
`ModelLabels.lexicon` indexes them once per model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.model.decode import Attribute

__all__ = [
    "FILL_CONFIDENCE",
    "FILL_MIN_COUNT",
    "KnownValues",
    "Lexicon",
    "apply_known_values",
    "build_known_values",
    "fill_from_known_values",
    "widen_to_known_values",
]

# attribute -> casefolded value -> (its most frequent spelling, how many training values it was)
KnownValues = Mapping[str, Mapping[str, tuple[str, int]]]

FILL_MIN_COUNT = 2
FILL_CONFIDENCE = 0.5


def build_known_values(pairs: Iterable[tuple[str, str]]) -> dict[str, dict[str, tuple[str, int]]]:
    """The lexicon of (attribute, value) pairs: case-insensitive, each with its most frequent spelling."""
    spellings: dict[tuple[str, str], dict[str, int]] = {}
    for name, value in pairs:
        value = value.strip()
        if value:
            seen = spellings.setdefault((name, value.casefold()), {})
            seen[value] = seen.get(value, 0) + 1
    known: dict[str, dict[str, tuple[str, int]]] = {}
    for (name, folded), seen in sorted(spellings.items()):
        known.setdefault(name, {})[folded] = (max(sorted(seen), key=seen.__getitem__), sum(seen.values()))
    return known


_WORD = re.compile(r"[^\W_]+")


def _first_word(value: str) -> str:
    match = _WORD.match(value)
    return match.group() if match else ""


@lru_cache(maxsize=16)  # one title is looked up once per allowed attribute, one after the other
def _title_words(title: str) -> tuple[str, tuple[tuple[int, str], ...]] | None:
    """The casefolded title and where each of its words starts; None when casefolding changes the length
    ("ß" -> "ss"), as offsets would then be wrong."""
    folded = title.casefold()
    if len(folded) != len(title):
        return None
    return folded, tuple((m.start(), m.group()) for m in _WORD.finditer(folded))


class Lexicon:
    """Known values indexed by attribute and first word: finding them in a title costs one dict lookup per
    word of the title, not one search per known value (OA-Mine has 784 brands)."""

    def __init__(self, known: KnownValues) -> None:
        self.known = known
        self._index: dict[str, dict[str, list[tuple[str, int]]]] = {}
        for name, values in known.items():
            by_word = self._index.setdefault(name, {})
            for value, (_, count) in values.items():
                by_word.setdefault(_first_word(value), []).append((value, count))

    def __bool__(self) -> bool:
        return bool(self.known)

    def is_known(self, name: str, value: str) -> bool:
        return value.casefold() in self.known.get(name, {})

    def occurrences(self, title: str, name: str, min_count: int) -> list[tuple[int, int]]:
        """Where values of ``name`` seen ``min_count`` times stand in the title as whole words
        (case-insensitive), longest first, then leftmost."""
        by_word = self._index.get(name)
        words = _title_words(title) if by_word else None
        if words is None:
            return []
        folded, starts = words
        candidates = [(start, entry) for start, word in starts for entry in by_word.get(word, ())]
        for value, count in by_word.get("", ()):  # values that begin with a sign ("#1"): may start anywhere
            start = folded.find(value)
            while start >= 0:
                candidates.append((start, (value, count)))
                start = folded.find(value, start + 1)
        found = []
        for start, (value, count) in candidates:
            end = start + len(value)
            if (
                count >= min_count
                and folded.startswith(value, start)
                and not (start and folded[start - 1].isalnum())
                and not (end < len(folded) and folded[end].isalnum())
            ):
                found.append((start, end))
        return sorted(found, key=lambda span: (span[0] - span[1], span[0]))


def widen_to_known_values(title: str, attributes: list[Attribute], lexicon: Lexicon) -> list[Attribute]:
    """Rule 1 (module docstring): an unknown span inside a longer known value of its attribute becomes it."""
    widened = []
    for attribute in attributes:
        if not lexicon.is_known(attribute.name, attribute.value):
            for start, end in lexicon.occurrences(title, attribute.name, 1):
                if (
                    start <= attribute.start
                    and attribute.end <= end
                    and end - start > attribute.end - attribute.start
                ):
                    attribute = replace(attribute, value=title[start:end], start=start, end=end)
                    break
        widened.append(attribute)
    return widened


def fill_from_known_values(
    title: str, attributes: list[Attribute], allowed: Sequence[str], lexicon: Lexicon
) -> list[Attribute]:
    """Rule 2 (module docstring): an empty allowed attribute gets a frequent known value in the title."""
    from workers.model.decode import Attribute

    taken = [(a.start, a.end) for a in attributes]
    filled, predicted = list(attributes), {a.name for a in attributes}
    for name in allowed:
        if name in predicted:
            continue
        for start, end in lexicon.occurrences(title, name, FILL_MIN_COUNT):
            if all(end <= s or e <= start for s, e in taken):
                filled.append(Attribute(name, title[start:end], FILL_CONFIDENCE, start, end))
                taken.append((start, end))
                break
    return filled


def apply_known_values(
    title: str, attributes: list[Attribute], allowed: Sequence[str] | None, lexicon: Lexicon
) -> list[Attribute]:
    """Both rules; fill only where the attributes are restricted to a category's (``allowed``)."""
    if not lexicon:
        return attributes
    attributes = widen_to_known_values(title, attributes, lexicon)
    return attributes if allowed is None else fill_from_known_values(title, attributes, allowed, lexicon)
