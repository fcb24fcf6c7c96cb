"""How far a candidate model agrees with the active one on the same listings: the shadow's maths.

One listing: the categories agree when their labels are equal. Per attribute name, the values each model
found (compared stripped and case-folded, as a set: a title can hold two values of one attribute) are
`equal` or `differ` when both models found the attribute, else `only_active` or `only_candidate`.
An attribute's agreement is equal / (equal + differ + only_active + only_candidate): a value one model
misses counts against agreement like a different one.

`Tally` adds listings up; the worker's metrics (`workers.runtime.shadow`) and `enrich rollout report`
(`workers.rollout_trial`) use the same `compare`, so the report and the dashboards measure one thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OUTCOMES", "Comparison", "Side", "Tally", "compare"]

EQUAL, DIFFER, ONLY_ACTIVE, ONLY_CANDIDATE = "equal", "differ", "only_active", "only_candidate"
OUTCOMES = (EQUAL, DIFFER, ONLY_ACTIVE, ONLY_CANDIDATE)


@dataclass(frozen=True)
class Comparison:
    category_agrees: bool
    attributes: dict[str, str]  # attribute name -> one of OUTCOMES

    @property
    def agrees(self) -> bool:
        return self.category_agrees and all(o == EQUAL for o in self.attributes.values())


def _values(attributes: Iterable[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for attribute in attributes:
        found.setdefault(str(attribute["name"]), set()).add(str(attribute["value"]).strip().casefold())
    return {name: frozenset(values) for name, values in found.items()}


def compare(
    active_category: Mapping[str, Any],
    active_attributes: Iterable[Mapping[str, Any]],
    candidate_category: Mapping[str, Any],
    candidate_attributes: Iterable[Mapping[str, Any]],
) -> Comparison:
    """Category and per-attribute outcomes of one listing (listing-attributes v1 `category`/`attributes`)."""
    active, candidate = _values(active_attributes), _values(candidate_attributes)
    outcomes: dict[str, str] = {}
    for name in sorted(active.keys() | candidate.keys()):
        if name not in candidate:
            outcomes[name] = ONLY_ACTIVE
        elif name not in active:
            outcomes[name] = ONLY_CANDIDATE
        else:
            outcomes[name] = EQUAL if active[name] == candidate[name] else DIFFER
    return Comparison(active_category.get("label") == candidate_category.get("label"), outcomes)


@dataclass
class Side:
    """Confidence (the category's) and inference latency of one side, summed."""

    confidence_sum: float = 0.0
    latency_ms_sum: float = 0.0
    inferred: int = 0  # listings with a latency: the active side's cache hits have none

    def add(self, confidence: float, latency_ms: float | None) -> None:
        self.confidence_sum += confidence
        if latency_ms is not None:
            self.latency_ms_sum += latency_ms
            self.inferred += 1

    def mean_latency_ms(self) -> float | None:
        return self.latency_ms_sum / self.inferred if self.inferred else None


@dataclass
class Tally:
    listings: int = 0
    category_agree: int = 0
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> outcome -> listings
    active: Side = field(default_factory=Side)
    candidate: Side = field(default_factory=Side)

    def add(self, comparison: Comparison) -> None:
        self.listings += 1
        self.category_agree += comparison.category_agrees
        for name, outcome in comparison.attributes.items():
            counts = self.attributes.setdefault(name, dict.fromkeys(OUTCOMES, 0))
            counts[outcome] += 1

    def category_rate(self) -> float:
        return self.category_agree / self.listings if self.listings else 0.0

    def attribute_rate(self, name: str) -> float:
        counts = self.attributes[name]
        total = sum(counts.values())
        return counts[EQUAL] / total if total else 0.0
