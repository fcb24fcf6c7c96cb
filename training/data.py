"""OA-Mine-format offers: loading, a deterministic train/dev split, value spans and BIO token labels.

A line is ``{"input": title, "category": str, "target_scores": {attribute: {value: 1}}}``; the value "n/a"
means the attribute is absent. A value is normally a verbatim substring of the title, but any labelled file
loads: a value that is not (another casing, another spelling) or several values for one attribute are kept
as gold, so evaluation counts them as misses where they are; training places what it can on the title
(verbatim, else case-insensitively) and :func:`alignment_report` counts what it skips.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder
from workers.model.scripts import joins_word

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "EncodedOffer",
    "Offer",
    "Span",
    "add_extra_offers",
    "alignment_report",
    "build_labels",
    "encode_offers",
    "find_value_spans",
    "load_offers",
    "offer_to_json",
    "split_offers",
    "token_tags",
    "write_offers",
]

ABSENT = "n/a"
IGNORE_INDEX = -100  # token label ignored by the loss (special tokens)


class DataError(ValueError):
    """An input file does not follow the OA-Mine format; the message names the file and line."""


@dataclass(frozen=True)
class Offer:
    """One product title, its category, its (attribute, value) pairs, and the attributes labelled "n/a".

    ``absent`` matters only to the literature's metric (an "n/a" gold against a prediction is a false
    positive there); training and our strict metric treat an absent attribute like an unlabelled one.
    """

    text: str
    category: str
    values: tuple[tuple[str, str], ...]
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Span:
    attribute: str
    start: int
    end: int


@dataclass(frozen=True)
class EncodedOffer:
    input_ids: np.ndarray  # int64 [L]
    tag_ids: np.ndarray  # int64 [L], IGNORE_INDEX on special tokens
    category_id: int


def _parse_line(line: str, where: str) -> Offer:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(row, dict) or not isinstance(row.get("input"), str):
        raise DataError(f"{where}: expected an object with a string 'input'")
    text, category, targets = row["input"], row.get("category"), row.get("target_scores", {})
    if not isinstance(category, str) or not category:
        raise DataError(f"{where}: 'category' must be a non-empty string")
    if not isinstance(targets, dict):
        raise DataError(f"{where}: 'target_scores' must map attribute -> {{value: score}}")
    values: list[tuple[str, str]] = []
    absent: list[str] = []
    for attribute, scored in targets.items():
        if not isinstance(scored, dict):
            raise DataError(f"{where}: target_scores[{attribute!r}] must be an object {{value: score}}")
        for value in scored:
            if value == ABSENT:
                absent.append(attribute)
            else:
                values.append((attribute, value))
    return Offer(text=text, category=category, values=tuple(values), absent=tuple(absent))


def load_offers(path: Path | str) -> list[Offer]:
    """Read an OA-Mine JSON-lines file; any malformed line raises :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected OA-Mine JSON lines)")
    offers = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                offers.append(_parse_line(line, f"{path}:{number}"))
    if not offers:
        raise DataError(f"{path}: no offers in the file")
    return offers


def offer_to_json(offer: Offer) -> dict[str, object]:
    targets: dict[str, dict[str, int]] = {}
    for attribute, value in offer.values:
        targets.setdefault(attribute, {})[value] = 1
    for attribute in offer.absent:
        targets.setdefault(attribute, {})[ABSENT] = 1
    return {"input": offer.text, "category": offer.category, "target_scores": targets}


def write_offers(path: Path | str, offers: Iterable[Offer]) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for offer in offers:
            handle.write(json.dumps(offer_to_json(offer), ensure_ascii=False) + "\n")


def split_offers(offers: Sequence[Offer], dev_fraction: float, salt: str) -> tuple[list[Offer], list[Offer]]:
    """Deterministic split by a hash of the title: identical titles always land on the same side."""
    train, dev = [], []
    for offer in offers:
        digest = hashlib.sha256(f"{salt}\x00{offer.text}".encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        (dev if fraction < dev_fraction else train).append(offer)
    return train, dev


def add_extra_offers(
    train: Sequence[Offer], held_out: Sequence[Offer], paths: Sequence[Path | str]
) -> tuple[list[Offer], dict[str, int]]:
    """`train` plus the offers of `paths` (e.g. corrections from `enrich review export`), and a count.

    Extra offers go to training only. One whose title is also held out (dev or test) is left out: it would
    put a labelled copy of a scored title into training and lift the score without the model generalising.
    """
    held_titles = {offer.text for offer in held_out}
    extra = [offer for path in paths for offer in load_offers(path)]
    added = [offer for offer in extra if offer.text not in held_titles]
    report = {"files": len(paths), "offers": len(extra), "added": len(added),
              "held_out_titles": len(extra) - len(added)}  # fmt: skip
    return [*train, *added], report


def build_labels(offers: Sequence[Offer]) -> ModelLabels:
    """Tags for every attribute seen, categories, and which attributes each category uses."""
    by_category: dict[str, set[str]] = {}
    for offer in offers:
        names = by_category.setdefault(offer.category, set())
        names.update(attribute for attribute, _ in offer.values)
    attributes = sorted(set().union(*by_category.values()))
    return ModelLabels.from_attributes(attributes, {c: sorted(a) for c, a in by_category.items()})


def _find_all(text: str, value: str) -> list[int]:
    starts, index = [], text.find(value) if value else -1
    while index >= 0:
        starts.append(index)
        index = text.find(value, index + 1)
    return starts


def _occurrences(text: str, value: str) -> list[int]:
    """Start indices of ``value`` in ``text``, whole-word matches first; case-insensitive matches when there
    is no verbatim one (and lower-casing keeps every index: "İ" would not)."""
    starts = _find_all(text, value)
    if not starts:
        lower_text, lower_value = text.lower(), value.lower()
        if len(lower_text) == len(text) and len(lower_value) == len(value):
            starts = _find_all(lower_text, lower_value)

    def cuts_a_word(start: int) -> bool:
        end = start + len(value)
        before = start > 0 and joins_word(text[start - 1], value[0])
        after = end < len(text) and joins_word(value[-1], text[end])
        return before or after

    return sorted(starts, key=lambda s: (cuts_a_word(s), s))


def find_value_spans(text: str, values: Sequence[tuple[str, str]]) -> list[Span]:
    """Place every value on the title without overlaps, longest values first.

    Each value gets its first free whole-word occurrence (so "10" skips the "10" inside "105-saddle"); then
    further occurrences of the same value are labelled too where free ("Women's ... (US Women's 5.5)").
    Values that only overlap others (BIO cannot nest spans) or are not in the title are left out.
    """
    taken = np.zeros(len(text) + 1, dtype=bool)
    spans: list[Span] = []
    ordered = sorted(set(values), key=lambda pair: (-len(pair[1]), pair))
    leftovers: list[tuple[str, int, int]] = []
    for attribute, value in ordered:
        placed = False
        for start in _occurrences(text, value):
            end = start + len(value)
            if taken[start:end].any():
                continue
            if placed:
                leftovers.append((attribute, start, end))
                continue
            taken[start:end] = True
            spans.append(Span(attribute, start, end))
            placed = True
    for attribute, start, end in leftovers:
        if not taken[start:end].any():
            taken[start:end] = True
            spans.append(Span(attribute, start, end))
    return sorted(spans, key=lambda s: s.start)


def alignment_report(offers: Sequence[Offer]) -> dict[str, int]:
    """How many gold values training can place as spans, and how many it skips and why.

    ``not_in_title``: not even a case-insensitive substring of the title; ``overlapping``: in the title but
    only where a longer value already sits (BIO cannot nest spans); ``case_insensitive``: placed on a
    differently cased occurrence; ``several_values``: (offer, attribute) pairs with more than one value.
    """
    report = {"values": 0, "placed": 0, "case_insensitive": 0, "not_in_title": 0, "overlapping": 0}
    several = 0
    for offer in offers:
        spans = find_value_spans(offer.text, offer.values)
        placed = {(span.attribute, offer.text[span.start : span.end]) for span in spans}
        placed_lower = {(a, v.lower()) for a, v in placed}
        names = [attribute for attribute, _ in offer.values]
        several += len({n for n in names if names.count(n) > 1})
        for attribute, value in set(offer.values):
            report["values"] += 1
            if (attribute, value) in placed:
                report["placed"] += 1
            elif (attribute, value.lower()) in placed_lower:
                report["placed"] += 1
                report["case_insensitive"] += 1
            elif not _occurrences(offer.text, value):
                report["not_in_title"] += 1
            else:
                report["overlapping"] += 1
    report["skipped"] = report["not_in_title"] + report["overlapping"]
    report["several_values"] = several
    return report


def token_tags(offsets: Sequence[tuple[int, int]], spans: Sequence[Span], labels: ModelLabels) -> np.ndarray:
    """BIO tag ids per token from character spans: a token inside a span is B- if first, else I-."""
    tag_index = {tag: i for i, tag in enumerate(labels.tags)}
    tags = np.zeros(len(offsets), dtype=np.int64)
    previous_span: Span | None = None
    for position, (start, end) in enumerate(offsets):
        if end <= start:
            tags[position] = IGNORE_INDEX
            previous_span = None
            continue
        span = next((s for s in spans if start < s.end and end > s.start), None)
        if span is None:
            previous_span = None
            continue
        prefix = "I-" if span == previous_span else "B-"
        tags[position] = tag_index.get(prefix + span.attribute, 0)
        previous_span = span
    return tags


def encode_offers(offers: Sequence[Offer], encoder: TitleEncoder, labels: ModelLabels) -> list[EncodedOffer]:
    """Token ids, BIO tag ids and category id per offer (unknown categories/attributes raise)."""
    category_index = {c: i for i, c in enumerate(labels.categories)}
    encoded = []
    for offer, tokens in zip(offers, encoder.encode([o.text for o in offers]), strict=True):
        if offer.category not in category_index:
            raise DataError(f"category {offer.category!r} is not in the model's labels")
        spans = find_value_spans(offer.text, offer.values)
        tags = token_tags(tokens.offsets, spans, labels)
        encoded.append(EncodedOffer(tokens.ids, tags, category_index[offer.category]))
    return encoded
