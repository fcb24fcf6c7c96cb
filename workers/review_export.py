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

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from workers.contract.errors import ConfigError
from workers.runtime.kafka_security import client_config
from workers.runtime.topic_range import read_to_end

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


def _plan(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, int]:
    """partition -> end offset (exclusive) of every partition holding records; assigned from the oldest."""
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise ConfigError(f"review topic {topic!r} not found: set --topic / ENRICH_REVIEW_TOPIC")
    starts, ends = [], {}
    for partition in sorted(metadata.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        if low < high:
            starts.append(TopicPartition(topic, partition, low))
            ends[partition] = high
    if starts:
        consumer.assign(starts)
    return ends


def export_review(bootstrap: str, topic: str, out: Path, *, timeout_s: float = 30.0) -> ExportCounts:
    """Write the review topic's flagged listings to `out` (replaced whole) and count what was read."""
    consumer = Consumer(client_config(bootstrap, {
        "group.id": f"enrich-review-export-{os.getpid()}", "enable.auto.commit": False,
        "enable.partition.eof": True, "isolation.level": "read_committed",
    }))  # fmt: skip
    counts, latest = ExportCounts(), {}
    try:
        ends = _plan(consumer, topic, timeout_s)
        for chunk in read_to_end(consumer, ends, "review export read", timeout_s):
            for msg in chunk:
                counts.read += 1
                _take(msg.value(), latest, counts)
    finally:
        consumer.close()
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
