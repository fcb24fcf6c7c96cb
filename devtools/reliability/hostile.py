"""Hostile input records, each with the outcome the contract promises for it.

Every record has a unique label; the ones that are valid listings despite looking odd (control
characters, 512-character and non-Latin titles) expect an attribute event, every other one a
dead-letter record with its reason code (`workers.contract.errors.ReasonCode`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator

import orjson

from devtools.harness.listings import FIXED_EVENT_TIME, OUTPUT, Expected, Record

__all__ = ["HOSTILE_KINDS", "HUGE_KINDS", "HUGE_PAYLOAD_BYTES", "hostile_records", "mixed"]

HUGE_PAYLOAD_BYTES = 10 * 1024 * 1024


def _listing(listing_id: str, **fields: object) -> dict[str, object]:
    return {"schema_version": 1, "listing_id": listing_id, "listing_version": 1, "title": "Acme coffee 500 g",
            "event_time": FIXED_EVENT_TIME, **fields}  # fmt: skip


def _dumps(listing_id: str, **fields: object) -> bytes:
    return orjson.dumps(_listing(listing_id, **fields))


def _dlq(code: str) -> frozenset[str]:
    return frozenset({f"dlq:{code}"})


_Maker = Callable[[str], tuple[bytes | None, bytes | None, frozenset[str]]]
_SCHEMA, _JSON, _UTF8 = _dlq("schema_violation"), _dlq("invalid_json"), _dlq("invalid_utf8")
_VALID = frozenset({OUTPUT})


def _without(lid: str, name: str) -> bytes:
    return orjson.dumps({k: v for k, v in _listing(lid).items() if k != name})


def _patched(lid: str, old: bytes, new: bytes) -> bytes:
    return _dumps(lid).replace(old, new)


# kind -> (key, value, accepted outcomes) for a record labelled `lid`
HOSTILE_KINDS: dict[str, _Maker] = {
    "invalid_json": lambda lid: (lid.encode(), b'{"listing_id": "' + lid.encode() + b'", "title": ', _JSON),
    "raw_control_char_in_json": lambda lid: (lid.encode(), _patched(lid, b"Acme", b"Ac\x01me"), _JSON),
    "lone_surrogate": lambda lid: (lid.encode(), _patched(lid, b"Acme", b"\\ud800Acme"), _JSON),
    "deep_nesting": lambda lid: (lid.encode(), b"[" * 5000 + b"]" * 5000, _JSON),
    "invalid_utf8": lambda lid: (lid.encode(), b"\xff\xfe\xfd not utf-8 " + lid.encode(), _UTF8),
    "invalid_utf8_in_title": lambda lid: (lid.encode(), _patched(lid, b"Acme", b"Ac\xc3\x28me"), _UTF8),
    "wrong_type_version": lambda lid: (lid.encode(), _dumps(lid, listing_version="1"), _SCHEMA),
    "wrong_type_title": lambda lid: (lid.encode(), _dumps(lid, title=12345), _SCHEMA),
    "wrong_type_id": lambda lid: (lid.encode(), orjson.dumps({**_listing(lid), "listing_id": 7}), _SCHEMA),
    "huge_integer": lambda lid: (
        lid.encode(), _patched(lid, b'"listing_version":1', b'"listing_version":' + b"9" * 40), _SCHEMA),
    "not_an_object": lambda lid: (lid.encode(), b'["' + lid.encode() + b'", 1, null]', _SCHEMA),
    "json_null": lambda lid: (lid.encode(), b"null", _SCHEMA),
    "missing_title": lambda lid: (lid.encode(), _without(lid, "title"), _SCHEMA),
    "missing_event_time": lambda lid: (lid.encode(), _without(lid, "event_time"), _SCHEMA),
    "bad_listing_id": lambda lid: (b"../../etc/passwd", _dumps("../../etc/passwd"), _SCHEMA),
    "empty_title": lambda lid: (lid.encode(), _dumps(lid, title=""), _SCHEMA),
    "blank_title": lambda lid: (lid.encode(), _dumps(lid, title=" \t\n "), _SCHEMA),
    "title_600_chars": lambda lid: (lid.encode(), _dumps(lid, title="x" * 600), _SCHEMA),
    "title_100k_chars": lambda lid: (
        lid.encode(), _dumps(lid, title="word " * 20_000), _dlq("payload_too_large")),
    "unknown_schema_version": lambda lid: (
        lid.encode(), _dumps(lid, schema_version=2), _dlq("unsupported_schema_version")),
    "string_schema_version": lambda lid: (
        lid.encode(), _dumps(lid, schema_version="1"), _dlq("unsupported_schema_version")),
    "null_key": lambda lid: (None, _dumps(lid), _dlq("missing_key")),
    "key_mismatch": lambda lid: (b"someone-else", _dumps(lid), _dlq("key_mismatch")),
    "tombstone": lambda lid: (lid.encode(), None, _dlq("empty_payload")),
    "empty_value": lambda lid: (lid.encode(), b"", _dlq("empty_payload")),
    # Odd but valid listings: each must yield an attribute event.
    "control_chars_in_title": lambda lid: (
        lid.encode(), _dumps(lid, title="Acme\u0000 coffee\u0007\u001b[31m 1 kg"), _VALID),
    "only_control_chars": lambda lid: (lid.encode(), _dumps(lid, title="\u0001\u0002\u0003"), _VALID),
    "title_512_chars": lambda lid: (
        lid.encode(), _dumps(lid, title=("Acme coffee beans " * 40)[:512]), _VALID),
    "non_latin_title": lambda lid: (
        lid.encode(), _dumps(lid, title="咖啡豆 500克 ☕ قهوة \u202eevil\u202c 🫘" * 3), _VALID),
}  # fmt: skip


# Records too big for the default 1 MB message limit once dead-lettered; the input topic must allow them.
HUGE_KINDS: dict[str, _Maker] = {
    "payload_10mb": lambda lid: (lid.encode(), _dumps(lid, title="A" * HUGE_PAYLOAD_BYTES),
                                 _dlq("payload_too_large")),
    # Valid UTF-8, so kept as JSON text: every control byte becomes a 6-byte \u00XX escape.
    "control_bytes_300kb": lambda lid: (lid.encode(), b"\x01" * 300_000, _dlq("payload_too_large")),
    "control_bytes_key_200kb": lambda lid: (b"\x01" * 200_000, _dumps(lid), _dlq("key_mismatch")),
    "key_2mb": lambda lid: (b"k" * 2_000_000, _dumps(lid), _dlq("key_mismatch")),
}  # fmt: skip


def hostile_records(count: int, *, huge: int, seed: int, huge_kinds: tuple[str, ...] = ()) -> list[Record]:
    """`count` hostile records: `huge` of them cycling through `huge_kinds` (default: all HUGE_KINDS), the
    rest through HOSTILE_KINDS."""
    kinds = list(HOSTILE_KINDS)
    big = list(huge_kinds or HUGE_KINDS)
    rng = random.Random(seed)
    records = []
    for index in range(count):
        label = f"H-{index:07d}"
        if index < huge:
            kind = big[index % len(big)]
            key, value, outcomes = HUGE_KINDS[kind](label)
        else:
            kind = kinds[index % len(kinds)]
            key, value, outcomes = HOSTILE_KINDS[kind](label)
        records.append(Record(key, value, Expected(label, kind, outcomes)))
    rng.shuffle(records)
    return records


def mixed(valid: Iterable[Record], bad: list[Record], *, seed: int) -> Iterator[Record]:
    """Valid records with the hostile ones spread among them at random places."""
    valid_list = list(valid)
    rng = random.Random(seed)
    slots = sorted(rng.randrange(len(valid_list) + 1) for _ in bad)
    bad_iter = iter(bad)
    slot_iter = iter(slots)
    next_slot = next(slot_iter, None)
    for index, record in enumerate([*valid_list, None]):
        while next_slot is not None and next_slot == index:
            yield next(bad_iter)
            next_slot = next(slot_iter, None)
        if record is not None:
            yield record
