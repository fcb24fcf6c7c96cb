"""`enrich review export`: the review topic as OA-Mine lines, for people (or a stronger model) to correct.

Each line is what `enrich train --extra-data` reads back (training/data.py):

    {"input": title, "category": predicted label, "target_scores": {attribute: {predicted value: 1}},
     "review": {"listing_id", "listing_version", "model", "reasons"}}

The predictions are the labeller's starting point: they fix the category and the values, add what the
model missed, and may write `"n/a": 1` for an attribute the title lacks; `review` is context (training
ignores it). Reads the topic from its oldest record to its end as it was when the export started, as an
assign-only reader that commits nothing, so every export sees the whole retained topic. A listing
reviewed more than once is written once: its highest `listing_version`, and for the same version the
one read last (on one partition, since keyed by listing id: the later event).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from workers.runtime.topic_range import read_whole_topic

__all__ = ["ExportCounts", "correction_line", "export_review"]


@dataclass
class ExportCounts:
    read: int = 0
    exported: int = 0
    superseded: int = 0  # an older (or the same, earlier) version of a listing exported in its newer one
    skipped: Counter[str] = field(default_factory=Counter)  # not_flagged, unreadable

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "exported": self.exported, "superseded": self.superseded,
                "skipped": dict(self.skipped)}  # fmt: skip


def correction_line(event: dict[str, Any]) -> dict[str, Any] | None:
    """The OA-Mine line of one flagged listing-attributes event; None when it carries no review title."""
    review = event.get("review")
    if not isinstance(review, dict) or not isinstance(review.get("title"), str):
        return None
    targets: dict[str, dict[str, int]] = {}
    for attribute in event["attributes"]:
        targets.setdefault(attribute["name"], {})[attribute["value"]] = 1
    return {
        "input": review["title"],
        "category": event["category"]["label"],
        "target_scores": targets,
        "review": {
            "listing_id": event["listing_id"], "listing_version": event["listing_version"],
            "model": event.get("model"), "reasons": review.get("reasons", []),
        },
    }  # fmt: skip


def export_review(bootstrap: str, topic: str, out: Path, *, timeout_s: float = 30.0) -> ExportCounts:
    """Write the review topic's flagged listings to `out` (replaced whole) and count what was read."""
    counts, latest = ExportCounts(), {}
    missing = f"review topic {topic!r} not found: set --topic / ENRICH_REVIEW_TOPIC"
    for msg in read_whole_topic(bootstrap, topic, "review export read", missing, timeout_s):
        counts.read += 1
        _take(msg.value(), latest, counts)
    lines = list(latest.values())
    counts.exported = len(lines)
    partial = out.with_name(out.name + ".partial")  # a reader never sees half a file
    with partial.open("wb") as handle:
        handle.writelines(orjson.dumps(line) + b"\n" for line in lines)
    partial.replace(out)
    return counts


def _take(value: bytes | None, latest: dict[str, dict[str, Any]], counts: ExportCounts) -> None:
    try:
        line = correction_line(orjson.loads(value or b""))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        counts.skipped["unreadable"] += 1
        return
    if line is None:
        counts.skipped["not_flagged"] += 1
        return
    listing_id, version = line["review"]["listing_id"], line["review"]["listing_version"]
    known = latest.get(listing_id)
    if known is not None:
        counts.superseded += 1
        if known["review"]["listing_version"] > version:
            return
        del latest[listing_id]  # re-inserted: the file lists listings in the order of their last review
    latest[listing_id] = line
