"""Low-confidence review: which results people (or a stronger model) should label, and why.

The rule (`review_reasons`) is a pure function of the thresholds and one result: the category is below
its threshold, or an attribute is below its own. Thresholds resolve from the most specific setting:

    categories[<predicted category>].attributes[<name>]  >  categories[<category>].attributes (all)
      >  default.attributes[<name>]  >  default.attributes (all)  >  ENRICH_REVIEW_ATTRIBUTE_MIN
    categories[<predicted category>].category  >  default.category  >  ENRICH_REVIEW_CATEGORY_MIN

A flagged listing still gets its attribute event, with a `review` object ({"title", "reasons"}), and the
same event is copied to the review topic (`ReviewTap`, emit's hook). The title rides along because the
event alone cannot rebuild it, and `enrich review export` turns the copies into OA-Mine lines to label.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter

from workers.contract.errors import ConfigError
from workers.contract.results import ListingResult
from workers.runtime.producer import AsyncProducer

__all__ = [
    "ReviewBatch",
    "ReviewTap",
    "ReviewThresholds",
    "Thresholds",
    "load_thresholds",
    "parse_thresholds",
    "review_reasons",
    "unknown_names",
]

log = logging.getLogger(__name__)

_ALL = "*"  # in an "attributes" object: every attribute not named there


@dataclass(frozen=True)
class Thresholds:
    """The thresholds in force for one predicted category."""

    category: float
    attribute: float
    attributes: Mapping[str, float] = field(default_factory=dict)  # per attribute name

    def for_attribute(self, name: str) -> float:
        return self.attributes.get(name, self.attribute)


@dataclass(frozen=True)
class ReviewThresholds:
    default: Thresholds
    categories: Mapping[str, Thresholds] = field(default_factory=dict)  # already merged with the default

    def for_category(self, label: str) -> Thresholds:
        return self.categories.get(label, self.default)


def review_reasons(
    thresholds: ReviewThresholds, category: Mapping[str, Any], attributes: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Why a result needs review (empty: it does not). `category`: {"label", "confidence"}; `attributes`:
    the event's attribute objects. A confidence equal to its threshold passes."""
    label, confidence = category["label"], category["confidence"]
    limits = thresholds.for_category(label)
    reasons: list[dict[str, Any]] = []
    if confidence < limits.category:
        reasons.append({"kind": "category", "name": label, "confidence": confidence,
                        "threshold": limits.category})  # fmt: skip
    for attribute in attributes:
        limit = limits.for_attribute(attribute["name"])
        if attribute["confidence"] < limit:
            reasons.append({"kind": "attribute", "name": attribute["name"],
                            "confidence": attribute["confidence"], "threshold": limit})  # fmt: skip
    return reasons


# ---- the thresholds file -------------------------------------------------------------------------------


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: expected a number from 0 to 1, got {value!r}")
    return float(value)


def _object(value: Any, where: str, keys: Collection[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object, got {value!r}")
    unknown = sorted(set(value) - set(keys)) if keys is not None else []
    if unknown:  # a misspelt key must not silently leave the default in force
        raise ConfigError(f"{where}: unknown keys {unknown} (allowed: {', '.join(keys or ())})")
    return value


def _section(data: Any, base: Thresholds, where: str) -> Thresholds:
    """One {"category": x, "attributes": y | {name: y, "*": y}} section over `base`."""
    section = _object(data, where, ("category", "attributes"))
    category = _fraction(section["category"], f"{where}.category") if "category" in section else base.category
    given = section.get("attributes")
    if given is None:
        return Thresholds(category, base.attribute, base.attributes)
    if not isinstance(given, dict):
        given = {_ALL: given}  # one number: every attribute of this section
    # "*" is more specific than anything `base` names: it replaces the base's per-name thresholds too.
    attribute = _fraction(given[_ALL], f"{where}.attributes") if _ALL in given else base.attribute
    named = {} if _ALL in given else dict(base.attributes)
    named.update({name: _fraction(value, f"{where}.attributes.{name}")
                  for name, value in given.items() if name != _ALL})  # fmt: skip
    return Thresholds(category, attribute, named)


def parse_thresholds(
    data: Any, *, category_min: float, attribute_min: float, where: str = "review thresholds"
) -> ReviewThresholds:
    """{"default": section, "categories": {label: section}} over the two global minimums; ConfigError
    naming the place of anything else."""
    top = _object(data if data is not None else {}, where, ("default", "categories"))
    base = Thresholds(_fraction(category_min, "ENRICH_REVIEW_CATEGORY_MIN"),
                      _fraction(attribute_min, "ENRICH_REVIEW_ATTRIBUTE_MIN"))  # fmt: skip
    default = _section(top["default"], base, f"{where}: default") if "default" in top else base
    categories = _object(top.get("categories", {}), f"{where}: categories")
    per_category = {
        label: _section(section, default, f"{where}: categories.{label}")
        for label, section in categories.items()
    }
    return ReviewThresholds(default, per_category)


def load_thresholds(path: Path | None, *, category_min: float, attribute_min: float) -> ReviewThresholds:
    """The thresholds of ENRICH_REVIEW_THRESHOLDS_FILE (None: the two minimums alone)."""
    if path is None:
        return parse_thresholds(None, category_min=category_min, attribute_min=attribute_min)
    where = f"ENRICH_REVIEW_THRESHOLDS_FILE {path}"
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from exc
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from exc
    return parse_thresholds(data, category_min=category_min, attribute_min=attribute_min, where=where)


def unknown_names(
    thresholds: ReviewThresholds, categories: Collection[str], attributes: Collection[str]
) -> list[str]:
    """Category and attribute names the thresholds set that the model does not know (likely typos)."""
    named = set(thresholds.default.attributes)
    for section in thresholds.categories.values():
        named.update(section.attributes)
    unknown = [f"category {label!r}" for label in thresholds.categories if label not in categories]
    return unknown + [f"attribute {name!r}" for name in sorted(named - set(attributes))]


# ---- emit's hook --------------------------------------------------------------------------------------


# Results repeat (the cache serves the same bytes for the same title), so the decision is remembered per
# result. Measured per event (3 attributes, one shared core): ~10 us deciding from the JSON (parsing the
# attribute list is ~6.5 us of it; building the event takes 2.9 us; the hit path, ~26,000 events/s, ~38 us);
# remembered, 0.6 us for a result that passes, 3.5 us for a flagged one (its review object holds the
# title, so it is built per event). 16,384 results of ~0.5 KB: ~8 MB at most.
_REMEMBERED = 16384


class ReviewTap:
    """Decides review per result and produces the copies to the review topic, on emit's ack path."""

    def __init__(
        self, *, topic: str, thresholds: ReviewThresholds, producer: AsyncProducer, counter: Counter
    ) -> None:
        self.topic, self.thresholds, self.producer, self._counter = topic, thresholds, producer, counter
        self.decide = lru_cache(maxsize=_REMEMBERED)(self._decide)

    def _decide(self, category_json: bytes, attributes_json: bytes) -> tuple[bytes, frozenset[str]] | None:
        """The reasons of one result as JSON and their kinds; None when it passes every threshold."""
        reasons = review_reasons(self.thresholds, orjson.loads(category_json), orjson.loads(attributes_json))
        if not reasons:
            return None
        return orjson.dumps(reasons), frozenset(reason["kind"] for reason in reasons)

    def batch(self, current: Callable[[], bool]) -> ReviewBatch:
        """The hook for one emitted batch; `current()`: its output still counts (exactly-once: the
        transaction it is produced into was not aborted meanwhile)."""
        return ReviewBatch(self, current)

    def delivered(self, kinds: Tally[str]) -> None:
        for kind, count in kinds.items():
            self._counter.labels(kind=kind).inc(count)


class ReviewBatch:
    """The review copies of one batch. Its events' offsets finish only once the attribute events and the
    copies are both acknowledged (`after_both`), so a crash between the two re-processes, never loses."""

    def __init__(self, tap: ReviewTap, current: Callable[[], bool]) -> None:
        self._tap, self._current = tap, current
        self.records: list[tuple[bytes, bytes]] = []
        self._kinds: Tally[str] = Tally()
        self._acks = 2
        self._on_copies: Callable[[], None] = lambda: None

    def flag(self, title: str, result: ListingResult) -> bytes | None:
        """The event's `review` object as JSON, or None when the result passes every threshold."""
        decided = self._tap.decide(result.category_json, result.attributes_json)
        if decided is None:
            return None
        reasons, kinds = decided
        self._kinds.update(kinds)  # a listing counts once per kind
        return orjson.dumps({"title": title, "reasons": orjson.Fragment(reasons)})

    def copy(self, key: bytes, event: bytes) -> None:
        self.records.append((key, event))

    def after_both(self, on_delivered: Callable[[], None]) -> Callable[[], None]:
        """The attribute events' delivery callback: `on_delivered` once the copies are acknowledged too."""
        if not self.records:
            return on_delivered

        def one_acknowledged() -> None:
            self._acks -= 1
            if self._acks == 0:
                if self._current():
                    self._tap.delivered(self._kinds)
                on_delivered()

        self._on_copies = one_acknowledged
        return one_acknowledged

    async def produce(self, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Produce the copies (after the attribute events, with `after_both`'s callback), with the
        events' own headers (a replay's copies say they are replayed)."""
        if self.records and self._current():
            await self._tap.producer.produce_batch(
                self._tap.topic, self.records, self._on_copies, headers, current=self._current
            )
