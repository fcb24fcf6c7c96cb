"""Unit tests of the pure view rules (no broker): parsing and the never-go-back update decision."""

from __future__ import annotations

import orjson
import pytest

from views.rules import BadAttributeEvent, decide_update, parse_event


def _event(listing_id: str, version: int, category: str) -> bytes:
    return orjson.dumps({"schema_version": 1, "listing_id": listing_id, "listing_version": version,
                         "category": {"label": category, "confidence": 0.9}, "attributes": []})


def test_first_event_counts_its_category() -> None:
    update = decide_update(None, parse_event(_event("a", 1, "Coffee")))
    assert update is not None and update.category_deltas == (("Coffee", 1),)


def test_older_or_equal_version_is_ignored() -> None:
    stored = parse_event(_event("a", 5, "Coffee")).document
    assert decide_update(stored, parse_event(_event("a", 4, "Tea"))) is None
    assert decide_update(stored, parse_event(_event("a", 5, "Tea"))) is None


def test_category_change_moves_the_count() -> None:
    stored = parse_event(_event("a", 1, "Coffee")).document
    update = decide_update(stored, parse_event(_event("a", 2, "Tea")))
    assert update is not None and update.category_deltas == (("Coffee", -1), ("Tea", 1))
    same = decide_update(stored, parse_event(_event("a", 3, "Coffee")))
    assert same is not None and same.category_deltas == ()


@pytest.mark.parametrize(("value", "message"), [
    (None, "tombstone"),
    (b"{not json", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"listing_version": 1, "category": {"label": "x"}}', "listing_id"),
    (b'{"listing_id": "a", "listing_version": -1, "category": {"label": "x"}}', "listing_version"),
    (b'{"listing_id": "a", "listing_version": true, "category": {"label": "x"}}', "listing_version"),
    (b'{"listing_id": "a", "listing_version": 1, "category": "x"}', "category.label"),
])
def test_bad_events_say_what_is_wrong(value: bytes | None, message: str) -> None:
    with pytest.raises(BadAttributeEvent, match=message):
        parse_event(value)
