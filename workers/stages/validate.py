"""Validate stage: raw Kafka bytes -> `Listing`, or `ValidationFailed` with a dead-letter reason code.

Order of checks (cheapest first, each with its own code): empty value, size limit (before parsing),
JSON parse (invalid_utf8 vs invalid_json), schema_version, the compiled JSON Schema, then the message key
(must be present and equal listing_id, since per-listing ordering depends on the partitioning).
"""

from __future__ import annotations

from typing import Any

import fastjsonschema
import orjson

from workers.contract.errors import ReasonCode, ValidationFailed
from workers.contract.events import (
    SCHEMA_VERSION,
    Listing,
    load_schema,
    max_payload_bytes,
    parse_event_time,
)
from workers.stages.validate_fast import compile_fast_check

__all__ = ["ListingValidator"]


class ListingValidator:
    """Checks listing v1 events against `contract/schemas/listing.v1.json` (compiled once, fastjsonschema)."""

    def __init__(self, schema: dict[str, Any] | None = None, *, require_key: bool = True) -> None:
        schema = schema if schema is not None else load_schema("listing")
        self.max_bytes = max_payload_bytes(schema)
        self.require_key = require_key
        # RFC 3339 via the C parser instead of fastjsonschema's long regex (same acceptance, 3.11+ parser).
        self._check = fastjsonschema.compile(schema, formats={"date-time": _is_rfc3339})
        self._certainly_valid = compile_fast_check(schema, _is_rfc3339, Listing, Listing._fields)

    def validate(self, value: bytes | None, key: bytes | None) -> Listing:
        """The listing in `value`; raises `ValidationFailed(code, message)` when it cannot be processed."""
        if not value:
            raise ValidationFailed(ReasonCode.EMPTY_PAYLOAD, "empty message value (tombstone or blank)")
        if len(value) > self.max_bytes:
            raise ValidationFailed(
                ReasonCode.PAYLOAD_TOO_LARGE, f"{len(value)} bytes, the limit is {self.max_bytes}"
            )
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise _parse_error(value, exc) from None
        if type(data) is not dict:
            raise ValidationFailed(
                ReasonCode.SCHEMA_VIOLATION, f"expected a JSON object, got {type(data).__name__}"
            )
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION or type(version) is not int:
            raise ValidationFailed(
                ReasonCode.UNSUPPORTED_SCHEMA_VERSION,
                f"schema_version {version!r}; this worker reads listing v{SCHEMA_VERSION}",
            )
        listing = self._certainly_valid(data) if self._certainly_valid is not None else None
        if listing is None:
            try:
                self._check(data)  # the authority, and the error message
            except fastjsonschema.JsonSchemaValueException as exc:
                raise ValidationFailed(ReasonCode.SCHEMA_VIOLATION, exc.message) from None
            get = data.get
            listing = Listing(
                data["listing_id"],
                int(data["listing_version"]),  # the schema also admits 3.0
                data["title"],
                data["event_time"],
                get("description"),
                get("category_hint"),
                get("locale"),
                get("marketplace"),
            )
        if self.require_key and (key is None or key != listing.listing_id.encode()):
            _check_key(key, listing.listing_id)
        return listing


def _is_rfc3339(text: str) -> bool:
    if len(text) < 20 or text[10] not in "Tt" or not (text[-1] in "Zz" or text[-6] in "+-"):
        return False
    return parse_event_time(text) is not None


def _parse_error(value: bytes, exc: orjson.JSONDecodeError) -> ValidationFailed:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as utf8_error:
        return ValidationFailed(ReasonCode.INVALID_UTF8, str(utf8_error))
    return ValidationFailed(ReasonCode.INVALID_JSON, str(exc))


def _check_key(key: bytes | None, listing_id: str) -> None:
    if key is None:
        raise ValidationFailed(
            ReasonCode.MISSING_KEY, "message key missing; producers must key by listing_id"
        )
    if key != listing_id.encode("utf-8"):
        raise ValidationFailed(
            ReasonCode.KEY_MISMATCH,
            f"message key {key.decode('utf-8', 'replace')!r} differs from listing_id {listing_id!r}",
        )
