"""Training-data augmentation that keeps value spans exact.

An offer is cut into segments (plain text or an attribute value) from its value spans; every operation works
on segments, and the augmented offer's values are read back from the labelled segments, so spans never
drift. Operations: value substitution (another value of the same attribute seen in training) and surface
noise (case, punctuation between segments, order of comma-separated parts).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from training.data import Offer, find_value_spans

__all__ = [
    "augment_offers",
    "build_value_pool",
    "change_case",
    "change_punctuation",
    "shuffle_parts",
    "substitute_values",
]

Segment = tuple[str, str | None]  # (text, attribute or None)

_SEPARATOR = re.compile(r"\s*,\s*|\s+[-|/]\s+|\s*;\s*")
_SEPARATOR_CHOICES = (", ", " - ", " | ", ",", " ")


def _segments(offer: Offer) -> list[Segment]:
    segments: list[Segment] = []
    cursor = 0
    for span in find_value_spans(offer.text, offer.values):
        if span.start > cursor:
            segments.append((offer.text[cursor : span.start], None))
        segments.append((offer.text[span.start : span.end], span.attribute))
        cursor = span.end
    if cursor < len(offer.text):
        segments.append((offer.text[cursor:], None))
    return segments


def _rebuild(segments: Sequence[Segment], category: str) -> Offer:
    text = "".join(piece for piece, _ in segments)
    values: list[tuple[str, str]] = []
    for piece, attribute in segments:
        if attribute is not None and piece.strip() and (attribute, piece) not in values:
            values.append((attribute, piece))
    return Offer(text=text, category=category, values=tuple(values))


ValuePool = dict[tuple[str, str], list[str]]  # (category, attribute) -> values


def build_value_pool(offers: Sequence[Offer]) -> ValuePool:
    """(category, attribute) -> sorted distinct values seen in ``offers`` (shoe brands stay shoe brands)."""
    pool: dict[tuple[str, str], set[str]] = {}
    for offer in offers:
        for attribute, value in offer.values:
            pool.setdefault((offer.category, attribute), set()).add(value)
    return {key: sorted(values) for key, values in sorted(pool.items())}


def substitute_values(offer: Offer, pool: ValuePool, rng: random.Random, probability: float = 0.5) -> Offer:
    """Swap values for other values of the same attribute (a repeated value is swapped everywhere)."""
    replacement: dict[tuple[str, str], str] = {}
    segments: list[Segment] = []
    for piece, attribute in _segments(offer):
        if attribute is not None:
            key = (attribute, piece)
            if key not in replacement:
                others = [v for v in pool.get((offer.category, attribute), []) if v != piece]
                swap = others and rng.random() < probability
                replacement[key] = rng.choice(others) if swap else piece
            piece = replacement[key]
        segments.append((piece, attribute))
    return _rebuild(segments, offer.category)


def change_case(offer: Offer, rng: random.Random) -> Offer:
    """Whole title lower-case, upper-case or title-case."""
    transform = rng.choice((str.lower, str.upper, str.title))
    return _rebuild([(transform(piece), a) for piece, a in _segments(offer)], offer.category)


def change_punctuation(offer: Offer, rng: random.Random) -> Offer:
    """Replace separators between parts (", ", " - ", " | " ...) in unlabelled text by one other style."""
    separator = rng.choice(_SEPARATOR_CHOICES)
    segments = [
        (_SEPARATOR.sub(separator, piece) if attribute is None else piece, attribute)
        for piece, attribute in _segments(offer)
    ]
    return _rebuild(segments, offer.category)


def shuffle_parts(offer: Offer, rng: random.Random) -> Offer:
    """Reorder the separator-delimited parts after the first (which usually holds the brand)."""
    parts: list[list[Segment]] = [[]]
    for piece, attribute in _segments(offer):
        if attribute is not None:
            parts[-1].append((piece, attribute))
            continue
        cursor = 0
        for match in _SEPARATOR.finditer(piece):
            parts[-1].append((piece[cursor : match.start()], None))
            parts.append([])
            cursor = match.end()
        parts[-1].append((piece[cursor:], None))
    parts = [part for part in parts if "".join(p for p, _ in part).strip()]
    if len(parts) < 3:
        return offer
    tail = parts[1:]
    rng.shuffle(tail)
    segments: list[Segment] = []
    for index, part in enumerate([parts[0], *tail]):
        if index:
            segments.append((", ", None))
        segments.extend(part)
    return _rebuild(segments, offer.category)


def augment_offers(
    offers: Sequence[Offer],
    copies: int = 1,
    seed: int = 0,
    pool: ValuePool | None = None,
    noise_probability: float = 0.3,
) -> list[Offer]:
    """``copies`` augmented variants per offer: value substitution, then each surface noise at random."""
    rng = random.Random(seed)
    pool = pool if pool is not None else build_value_pool(offers)
    augmented = []
    for offer in offers:
        for _ in range(copies):
            variant = substitute_values(offer, pool, rng)
            for noise in (change_case, change_punctuation, shuffle_parts):
                if rng.random() < noise_probability:
                    variant = noise(variant, rng)
            augmented.append(variant)
    return augmented
