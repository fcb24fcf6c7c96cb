"""Validate stage: every way a record can be unusable gets its own dead-letter reason code."""

from __future__ import annotations

import base64

import orjson
import pytest

from workers.contract.errors import ReasonCode, ValidationFailed
from workers.contract.events import SourceRecord, dead_letter_event, load_schema
from workers.runtime.metrics import event_epoch
from workers.stages.validate import ListingValidator

GOOD = {
    "listing_id": "L-1",
    "listing_version": 2,
    "title": "Lavazza Whole Bean Coffee, 2 lb",
    "event_time": "2026-11-29T07:05:00Z",
}


@pytest.fixture(scope="module")
def validator() -> ListingValidator:
    return ListingValidator()


def test_valid_listing_is_parsed_with_optional_fields(validator: ListingValidator) -> None:
    listing = validator.validate(orjson.dumps({**GOOD, "locale": "en_US", "extra": 1}), b"L-1")
    assert (listing.listing_id, listing.listing_version, listing.title) == ("L-1", 2, GOOD["title"])
    assert listing.locale == "en_US" and listing.description is None


@pytest.mark.parametrize(
    ("value", "key", "code"),
    [
        (None, b"L-1", ReasonCode.EMPTY_PAYLOAD),
        (b"", b"L-1", ReasonCode.EMPTY_PAYLOAD),
        (b"x" * 70000, b"L-1", ReasonCode.PAYLOAD_TOO_LARGE),
        (b'{"listing_id": "L-1", "title": ', b"L-1", ReasonCode.INVALID_JSON),
        (b'{"title": "caf\xe9"}', b"L-1", ReasonCode.INVALID_UTF8),
        (b"[1, 2]", b"L-1", ReasonCode.SCHEMA_VIOLATION),
        (orjson.dumps({**GOOD, "schema_version": 2}), b"L-1", ReasonCode.UNSUPPORTED_SCHEMA_VERSION),
        (orjson.dumps({**GOOD, "schema_version": "1"}), b"L-1", ReasonCode.UNSUPPORTED_SCHEMA_VERSION),
        (orjson.dumps({**GOOD, "title": "   "}), b"L-1", ReasonCode.SCHEMA_VIOLATION),
        (orjson.dumps({**GOOD, "title": "t" * 513}), b"L-1", ReasonCode.SCHEMA_VIOLATION),
        (orjson.dumps({**GOOD, "listing_version": -1}), b"L-1", ReasonCode.SCHEMA_VIOLATION),
        (orjson.dumps({**GOOD, "listing_version": "3"}), b"L-1", ReasonCode.SCHEMA_VIOLATION),
        (orjson.dumps({**GOOD, "event_time": "yesterday"}), b"L-1", ReasonCode.SCHEMA_VIOLATION),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "title"}), b"L-1", ReasonCode.SCHEMA_VIOLATION),
        (orjson.dumps(GOOD), None, ReasonCode.MISSING_KEY),
        (orjson.dumps(GOOD), b"L-2", ReasonCode.KEY_MISMATCH),
    ],
)
def test_invalid_records_get_reason_codes(validator: ListingValidator, value, key, code: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validator.validate(value, key)
    assert caught.value.code == code
    assert caught.value.message


def test_size_limit_comes_from_the_schema(validator: ListingValidator) -> None:
    assert validator.max_bytes == load_schema("listing")["x-max-payload-bytes"]


def test_rfc3339_variants(validator: ListingValidator) -> None:
    for good in ("2026-11-29T07:05:00.123+01:00", "2026-11-29t07:05:00z", "2026-11-29T07:05:00-05:00"):
        validator.validate(orjson.dumps({**GOOD, "event_time": good}), b"L-1")
    for bad in ("2026-11-29T07:05:00", "2026-02-30T07:05:00Z", "2026-11-29 07:05:00Z"):
        with pytest.raises(ValidationFailed):
            validator.validate(orjson.dumps({**GOOD, "event_time": bad}), b"L-1")


def test_every_event_time_validation_accepts_has_a_freshness_epoch() -> None:
    """Validation and the freshness metric read event_time with one parser: a lowercase `z` passed
    validation and was then skipped by the metric."""
    assert event_epoch("2026-11-29t07:05:00z") == event_epoch("2026-11-29T07:05:00Z") == 1795935900.0
    assert event_epoch("2026-11-29T08:05:00+01:00") == 1795935900.0
    assert event_epoch("not a time") is None


def test_dead_letter_keeps_original_bytes() -> None:
    import fastjsonschema

    check = fastjsonschema.compile(load_schema("dead-letter"))
    source = SourceRecord("listings.new", 3, 17, b"\xffkey", 1700000000000)
    raw = b"\x00\xff not utf-8"
    event = orjson.loads(dead_letter_event(source, raw, ReasonCode.INVALID_UTF8, "bad byte", "w-1"))
    check(event)
    assert event["payload_encoding"] == "base64" and base64.b64decode(event["payload"]) == raw
    assert event["source"]["key_encoding"] == "base64"
    assert (event["source"]["partition"], event["source"]["offset"]) == (3, 17)
    text_event = orjson.loads(dead_letter_event(source, b'{"a":', ReasonCode.INVALID_JSON, "eof", "w-1"))
    check(text_event)
    assert text_event["payload"] == '{"a":' and text_event["payload_encoding"] == "utf-8"
    tombstone = orjson.loads(dead_letter_event(source, None, ReasonCode.EMPTY_PAYLOAD, "empty", "w-1"))
    check(tombstone)
    assert tombstone["payload"] is None
