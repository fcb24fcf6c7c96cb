"""Pure logic of shadow and canary: the listing_id sample, the canary split, and the agreement maths."""

from __future__ import annotations

from typing import Any

import pytest

from workers.contract.events import Listing, SourceRecord
from workers.rollout_trial import tally_records
from workers.stages.agreement import Tally, compare
from workers.stages.item import WorkItem
from workers.stages.trial import CANARY, SHADOW, Trial, batch_key, in_sample, sample_point, serving_for


class FakeServing:  # only the identity the routing looks at
    def __init__(self, digest: str) -> None:
        self.digest = digest


def item(listing_id: str) -> WorkItem:
    listing = Listing(listing_id=listing_id, listing_version=1, title="t", event_time="2026-01-01T00:00:00Z")
    return WorkItem(SourceRecord("in", 0, 0, listing_id.encode(), None), listing, 0.0)


def test_the_sample_is_a_fixed_function_of_the_listing_id_and_about_its_fraction() -> None:
    ids = [f"L{i:06d}" for i in range(20_000)]
    points = [sample_point(i) for i in ids]
    assert points == [sample_point(i) for i in ids]  # the same in every call (and process: not `hash`)
    assert all(0 <= p < 1 for p in points)
    share = sum(in_sample(i, 0.1) for i in ids) / len(ids)
    assert 0.09 < share < 0.11
    # A larger fraction picks a superset; 0 picks nothing, 1 everything.
    assert {i for i in ids if in_sample(i, 0.05)} <= {i for i in ids if in_sample(i, 0.1)}
    assert not any(in_sample(i, 0.0) for i in ids) and all(in_sample(i, 1.0) for i in ids)


def test_a_canary_splits_a_chunk_by_listing_and_a_shadow_does_not() -> None:
    active, candidate = FakeServing("sha256:a"), FakeServing("sha256:b")
    items = [item(f"C{i}") for i in range(400)]
    canary = Trial(CANARY, 0.25, candidate)  # type: ignore[arg-type]
    parts = canary.route(items, active)  # type: ignore[arg-type]
    assert [p[0] for p in parts] == [active, candidate]
    assert {i.listing.listing_id for i in parts[1][1]} == {
        i.listing.listing_id for i in items if in_sample(i.listing.listing_id, 0.25)
    }
    assert sorted(map(id, parts[0][1] + parts[1][1])) == sorted(map(id, items))  # each item once
    assert parts[0][1] == [i for i in items if not in_sample(i.listing.listing_id, 0.25)]  # order kept
    shadow = Trial(SHADOW, 0.25, candidate)  # type: ignore[arg-type]
    assert shadow.route(items, active) == [(active, items)]  # type: ignore[arg-type]
    # Batcher keys keep the models apart; a batch is for the model that tokenized its items.
    assert batch_key(active, active, 32) == 32  # type: ignore[arg-type]
    assert batch_key(candidate, active, 32) == ("sha256:b", 32)  # type: ignore[arg-type]
    tokenized = item("X")
    tokenized.model_digest = "sha256:b"
    assert serving_for(tokenized, active, canary) is candidate  # type: ignore[arg-type]
    tokenized.model_digest = "sha256:a"
    assert serving_for(tokenized, active, canary) is active  # type: ignore[arg-type]


def attrs(**values: Any) -> list[dict[str, Any]]:
    out = []
    for name, value in values.items():
        for v in value if isinstance(value, list) else [value]:
            out.append({"name": name.replace("_", " "), "value": v})
    return out


def test_agreement_per_attribute_and_category() -> None:
    result = compare(
        {"label": "Coffee"}, attrs(Brand="Lavazza", Roast_type="Medium", Flavor=["Vanilla", "Mocha"]),
        {"label": "Coffee"},
        attrs(Brand=" lavazza ", Roast_type="Dark", Size="2 lb", Flavor=["Mocha", "Vanilla"]),
    )  # fmt: skip
    assert result.category_agrees
    assert result.attributes == {"Brand": "equal", "Flavor": "equal", "Roast type": "differ",
                                 "Size": "only_candidate"}  # fmt: skip
    assert not result.agrees
    other = compare({"label": "Coffee"}, attrs(Brand="Illy"), {"label": "Tea"}, [])
    assert not other.category_agrees and other.attributes == {"Brand": "only_active"}
    same = compare({"label": "Tea"}, attrs(Brand="Twinings"), {"label": "Tea"}, attrs(Brand="Twinings"))
    assert same.agrees

    tally = Tally()
    for comparison in (result, other, same):
        tally.add(comparison)
    assert tally.listings == 3 and tally.category_agree == 2
    assert tally.category_rate() == pytest.approx(2 / 3)
    assert tally.attributes["Brand"] == {"equal": 2, "differ": 0, "only_active": 1, "only_candidate": 0}
    assert tally.attribute_rate("Brand") == pytest.approx(2 / 3)
    assert tally.attribute_rate("Roast type") == 0.0


def shadow_record(listing_id: str, version: int, active_label: str, candidate_label: str) -> dict[str, Any]:
    side = {"attributes": [], "latency_ms": 2.0}
    return {
        "group": "g", "listing_id": listing_id, "listing_version": version, "title": listing_id,
        "active": {**side, "model": {"digest": "sha256:" + "a" * 64}, "category": {"label": active_label,
                                                                                  "confidence": 0.9}},
        "candidate": {**side, "model": {"digest": "sha256:" + "b" * 64, "name": "tiny", "version": "v2"},
                      "category": {"label": candidate_label, "confidence": 0.5}},
        "agreement": {"category": active_label == candidate_label, "attributes": {}},
    }  # fmt: skip


def test_the_report_counts_the_last_comparison_of_each_listing_version_of_its_group() -> None:
    records = [
        shadow_record("L1", 1, "Tea", "Coffee"),
        shadow_record("L1", 1, "Tea", "Tea"),  # the same listing version compared again: the last counts
        shadow_record("L2", 1, "Tea", "Coffee"),
        {**shadow_record("L3", 1, "Tea", "Tea"), "group": "other"},
    ]
    candidates = tally_records(records, "g", examples=5)
    (entry,) = candidates.values()
    assert entry.tally.listings == 2 and entry.tally.category_agree == 1
    assert [r["listing_id"] for r in entry.examples] == ["L2"]
    assert entry.tally.candidate.confidence_sum == pytest.approx(1.0)
    assert entry.tally.active.mean_latency_ms() == pytest.approx(2.0)
