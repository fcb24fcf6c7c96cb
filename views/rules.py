"""The pure rules of the views: parse an attribute event, decide whether it replaces the stored one.

Kept free of Faust so they are unit-tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["AttributeEvent", "BadAttributeEvent", "LatestUpdate", "decide_update", "parse_event"]


class BadAttributeEvent(ValueError):
    """An input record is not a usable listing-attributes v1 event."""


@dataclass(frozen=True)
class AttributeEvent:
    listing_id: str
    listing_version: int
    category: str
    document: dict[str, Any]  # the whole event, as the recommender reads it from listings.latest


@dataclass(frozen=True)
class LatestUpdate:
    """An accepted event and the per-category count changes it causes."""

    event: AttributeEvent
    category_deltas: tuple[tuple[str, int], ...]


def parse_event(value: bytes | None) -> AttributeEvent:
    """Decode the fields the views need; raises BadAttributeEvent saying which field is wrong."""
    if value is None:
        raise BadAttributeEvent("record has no value (tombstone)")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadAttributeEvent(f"value is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadAttributeEvent("value is not a JSON object")
    listing_id = document.get("listing_id")
    version = document.get("listing_version")
    category = document.get("category")
    label = category.get("label") if isinstance(category, dict) else None
    if not isinstance(listing_id, str) or not listing_id:
        raise BadAttributeEvent("listing_id missing or not a non-empty string")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise BadAttributeEvent(f"listing_version of {listing_id!r} missing or not a non-negative integer")
    if not isinstance(label, str) or not label:
        raise BadAttributeEvent(f"category.label of {listing_id!r} missing or not a non-empty string")
    return AttributeEvent(listing_id, version, label, document)


def decide_update(stored: dict[str, Any] | None, event: AttributeEvent) -> LatestUpdate | None:
    """Return the update to apply, or None when `stored` is as new or newer.

    An equal version is a redelivery (at-least-once upstream), so it changes nothing: the view never goes
    back to an older listing_version and never counts a listing twice.
    """
    if stored is None:
        return LatestUpdate(event, ((event.category, 1),))
    if int(stored["listing_version"]) >= event.listing_version:
        return None
    old_category = str(stored["category"]["label"])
    if old_category == event.category:
        return LatestUpdate(event, ())
    return LatestUpdate(event, ((old_category, -1), (event.category, 1)))
