"""Cached results re-anchor on the current title: a hit from a title differing in case or spacing gives
exactly the offsets decoding would have given for this title."""

from __future__ import annotations

import numpy as np

from workers.decode import Attribute
from workers.results import TokenSpanResult, ids_digest


def test_spans_map_to_the_current_titles_offsets() -> None:
    original = "Lavazza  Dark Roast, 2 lb"
    offsets = [(0, 0), (0, 7), (9, 13), (14, 19), (19, 20), (21, 22), (23, 25), (0, 0)]
    attributes = [Attribute("Brand", "Lavazza", 0.9, 0, 7), Attribute("Roast type", "Dark Roast", 0.8, 9, 19)]
    assert [original[a.start : a.end] for a in attributes] == ["Lavazza", "Dark Roast"]
    result = TokenSpanResult.from_attributes(ids_digest(np.arange(8)), "Coffee", 0.95, attributes, offsets)
    restored = TokenSpanResult.from_bytes(result.to_bytes())
    assert restored == result

    other = "LAVAZZA DARK ROAST, 2 LB"  # same tokens for an uncased tokenizer, different offsets
    other_offsets = [(0, 0), (0, 7), (8, 12), (13, 18), (18, 19), (20, 21), (22, 24), (0, 0)]
    found = restored.attributes_for(other, other_offsets)
    assert [(a["name"], a["value"], a["start"], a["end"]) for a in found] == [
        ("Brand", "LAVAZZA", 0, 7), ("Roast type", "DARK ROAST", 8, 18),
    ]  # fmt: skip
    assert all(a["source_field"] == "title" for a in found)


def test_unreadable_cache_entries_are_misses() -> None:
    assert TokenSpanResult.from_bytes(b"not json") is None
    assert TokenSpanResult.from_bytes(b'{"d": "x"}') is None
