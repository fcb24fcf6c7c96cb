"""A result is serialised once; the cache value is sealed to its title, so only that exact title reads it."""

from __future__ import annotations

import orjson

from workers.contract.events import Listing, attribute_event
from workers.contract.results import ListingResult
from workers.model.decode import Attribute

TITLE = "Lavazza Dark Roast, 2 lb"


def _result() -> ListingResult:
    attributes = [
        Attribute("Brand", "Lavazza", 0.91234567, 0, 7),
        Attribute("Roast type", "Dark Roast", 0.8, 8, 18),
    ]
    return ListingResult.from_decoded("Coffee", 0.95, attributes)


def test_a_result_is_listing_attributes_json_and_round_trips_through_the_cache_value() -> None:
    result = _result()
    assert result.category == {"label": "Coffee", "confidence": 0.95}
    assert result.attributes[0] == {
        "name": "Brand", "value": "Lavazza", "confidence": 0.912346,
        "start": 0, "end": 7, "source_field": "title", "normalized": {"text": "lavazza"},
    }  # fmt: skip
    assert ListingResult.from_bytes(result.to_bytes(TITLE), TITLE) == result


def test_the_event_embeds_the_result_as_it_is() -> None:
    listing = Listing("L1", 3, TITLE, "2026-11-29T09:00:00Z")
    event = orjson.loads(attribute_event(
        listing, model={"name": "m", "version": "v1"}, category_json=_result().category_json,
        attributes_json=_result().attributes_json, cache_hit=True, latency_ms=1.5, worker_id="w",
    ))  # fmt: skip
    assert event["category"] == _result().category and event["attributes"] == _result().attributes
    assert [TITLE[a["start"] : a["end"]] for a in event["attributes"]] == ["Lavazza", "Dark Roast"]


def test_a_value_sealed_for_another_title_or_damaged_is_a_miss() -> None:
    data = _result().to_bytes(TITLE)
    assert ListingResult.from_bytes(data, "LAVAZZA DARK ROAST, 2 LB") is None
    assert ListingResult.from_bytes(data[:-1], TITLE) is None
    assert ListingResult.from_bytes(data[:4] + b"X" + data[5:], TITLE) is None
    for junk in (b"", b"not json", b"12345678", b'{"c": ["Coffee", 0.9], "a": []}'):
        assert ListingResult.from_bytes(junk, TITLE) is None
    empty = ListingResult.from_decoded("Coffee", 0.5, [])
    assert ListingResult.from_bytes(empty.to_bytes(TITLE), TITLE) == empty
