"""The event contracts in code: schema files, the parsed listing, and the two events the worker writes.

Shapes follow `schemas/` beside this module (listing v1 in, listing-attributes v1 and dead-letter v1 out);
every output is orjson-serialised bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, NamedTuple, Protocol

import orjson

__all__ = [
    "REDRIVE_ATTEMPT_HEADER",
    "SCHEMA_DIR",
    "AttributeLike",
    "Listing",
    "SourceRecord",
    "attribute_event",
    "dead_letter_event",
    "dead_letter_key",
    "load_schema",
    "max_payload_bytes",
    "redrive_attempt",
    "utc_now_iso",
]

# Package data (importlib.resources), so an installed worker finds its contracts without a source checkout.
SCHEMA_DIR = resources.files("workers.contract") / "schemas"
SCHEMA_VERSION = 1


@cache
def load_schema(name: str, version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema of contract `name` (listing, listing-attributes, dead-letter) at `version`."""
    return json.loads((SCHEMA_DIR / f"{name}.v{version}.json").read_text(encoding="utf-8"))


def max_payload_bytes(schema: dict[str, Any]) -> int:
    """The size limit a schema states (`x-max-payload-bytes`), checked before any parsing."""
    return int(schema["x-max-payload-bytes"])


def parse_event_time(text: str) -> datetime | None:
    """A listing's `event_time` as an aware datetime (no offset: UTC); None when it cannot be read.
    RFC 3339 allows a lowercase `z`, which `datetime.fromisoformat` refuses: validation accepted such
    listings and the freshness metric then skipped them."""
    try:
        parsed = datetime.fromisoformat(text[:-1] + "Z" if text[-1:] == "z" else text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class Listing(NamedTuple):
    """A validated listing v1 event (a NamedTuple: immutable and cheap to build on the hot path)."""

    listing_id: str
    listing_version: int
    title: str
    event_time: str
    description: str | None = None
    category_hint: str | None = None
    locale: str | None = None
    marketplace: str | None = None


class SourceRecord(NamedTuple):
    """Where an input record came from; enough to dead-letter it and to commit past it (a NamedTuple:
    built once per consumed record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None = None


class AttributeLike(Protocol):
    name: str
    value: str
    confidence: float
    start: int
    end: int


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attribute_event(
    listing: Listing,
    *,
    model: dict[str, str],
    category_json: bytes,
    attributes_json: bytes,
    cache_hit: bool,
    latency_ms: float,
    worker_id: str,
    processed_at: str | None = None,
    review: bytes | None = None,
) -> bytes:
    """A listing-attributes v1 event; `model`: {"name", "version", "digest"}; the category object and the
    attribute list come already serialised (`workers.contract.results.ListingResult`) and are embedded as
    they are; `latency_ms` is written as given (callers round it); `review`: the serialised review object
    of a low-confidence result (`workers.stages.review`), left out when None."""
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "listing_id": listing.listing_id,
        "listing_version": listing.listing_version,
        "model": model,
        "category": orjson.Fragment(category_json),
        "attributes": orjson.Fragment(attributes_json),
        "cache_hit": cache_hit,
        "processed_at": processed_at or utc_now_iso(),
        "latency_ms": latency_ms,
        "worker_id": worker_id,
    }
    if review is not None:
        event["review"] = orjson.Fragment(review)
    return orjson.dumps(event)


# Base64 grows 4/3 and the rest of the record is small: stays well under librdkafka's and the broker's
# default 1 MB message limit.
DLQ_PAYLOAD_MAX_BYTES = 256 * 1024
DLQ_KEY_MAX_BYTES = 1024
DLQ_RECORD_MAX_BYTES = 900_000


def _text_or_base64(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a dead-letter record: the original key, cut to DLQ_KEY_MAX_BYTES."""
    return key[:DLQ_KEY_MAX_BYTES] if key is not None and len(key) > DLQ_KEY_MAX_BYTES else key


REDRIVE_ATTEMPT_HEADER = "enrich-redrive-attempt"


def redrive_attempt(headers: list[tuple[str, bytes | None]] | None) -> int:
    """How many times `enrich dlq redrive` has re-published this record (its header; 0 without one)."""
    for name, value in headers or ():
        if name == REDRIVE_ATTEMPT_HEADER and value is not None:
            try:
                return max(int(value.decode("ascii")), 0)
            except (UnicodeDecodeError, ValueError):
                return 0
    return 0


def dead_letter_event(
    source: SourceRecord, value: bytes | None, code: str, message: str, worker_id: str, attempt: int = 0
) -> bytes:
    """A dead-letter v1 record keeping the original bytes (as text when UTF-8, otherwise base64).

    The record must fit in one Kafka message, or the worker could never get past it: payloads keep at
    most DLQ_PAYLOAD_MAX_BYTES (less when JSON escapes blow them up) plus the size and sha256 of the
    whole, keys at most DLQ_KEY_MAX_BYTES. The full original stays on the source topic at
    `source.partition`/`source.offset`. `attempt`: the record's redrive attempt (its header), kept as
    `redrive_attempt` so that a redriven record that fails again is not redriven forever.
    """
    payload_limit = DLQ_PAYLOAD_MAX_BYTES
    while True:
        record = _dead_letter_record(source, value, code, message, worker_id, payload_limit, attempt)
        if len(record) <= DLQ_RECORD_MAX_BYTES:
            return record
        # Only escapes (control characters: 6 bytes each) can make it this large; a quarter always fits.
        payload_limit //= 4


def _dead_letter_record(
    source: SourceRecord, value: bytes | None, code: str, message: str, worker_id: str, payload_limit: int,
    attempt: int,
) -> bytes:  # fmt: skip
    truncated = value is not None and len(value) > payload_limit
    kept = value[:payload_limit] if truncated and value is not None else value
    payload, encoding = _text_or_base64(kept) if kept is not None else (None, "utf-8")
    kept_key = dead_letter_key(source.key)
    key, key_encoding = _text_or_base64(kept_key) if kept_key is not None else (None, "utf-8")
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "source": {
                "topic": source.topic,
                "partition": source.partition,
                "offset": source.offset,
                "key": key,
                "key_encoding": key_encoding,
                "key_truncated": kept_key is not source.key,
                "timestamp_ms": source.timestamp_ms,
            },
            "payload": payload,
            "payload_encoding": encoding,
            "payload_truncated": truncated,
            "payload_size_bytes": len(value) if value is not None else 0,
            "payload_sha256": hashlib.sha256(value).hexdigest() if truncated and value is not None else None,
            "error": {"code": code, "message": message[:2048]},
            "worker_id": worker_id,
            "failed_at": utc_now_iso(),
            "redrive_attempt": attempt,
        }
    )
