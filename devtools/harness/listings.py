"""Listing v1 records as the demo, the bench and the reliability suite produce them, from one builder.

Every caller wants the same event shape and differs only in ids, versions, which titles, and the
event_time: the demo stamps "now" (the worker's lag figures then mean something), the bench stamps the
moment each record is produced (its latency is measured from it), the reliability suite a fixed time (so
a record's bytes depend only on the seed). `Record`/`Expected` pair a record with the outcome the
contract promises for it, which the reliability ledger accounts for and the paced producer carries.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from devtools.harness.titles import fixture_titles, lot_title

__all__ = [
    "FIXED_EVENT_TIME",
    "OUTPUT",
    "Expected",
    "Record",
    "expect_output",
    "invalid_samples",
    "iso_ms",
    "listing_records",
    "listing_value",
    "sample_listings",
    "valid_listings",
]

OUTPUT = "output"  # the expected outcome of a valid listing; hostile records expect "dlq:<code>"
FIXED_EVENT_TIME = "2026-11-29T07:00:00Z"


@dataclass(frozen=True, slots=True)
class Expected:
    """What must become of one input record: a label for reports and the acceptable outcomes."""

    label: str
    kind: str
    outcomes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None
    value: bytes | None
    expected: Expected


def iso_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, as the worker's own timestamps (`utc_now_iso`)."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def listing_value(listing_id: str, title: str, *, event_time: str, version: int = 1,
                  fields: Mapping[str, object] | None = None) -> bytes:  # fmt: skip
    """One listing v1 event (JSON bytes); `fields` adds optional ones (category_hint, description)."""
    return orjson.dumps({
        "schema_version": 1, "listing_id": listing_id, "listing_version": version, "title": title,
        "locale": "en_US", "marketplace": "US", "event_time": event_time, **(fields or {}),
    })  # fmt: skip


def listing_records(
    count: int | None, titles: Sequence[str], *, prefix: str = "L", digits: int = 7, version: int = 1,
    seed: int | None = None, unique_titles: bool = False, event_time: str | None = None,
    stamps: dict[bytes, int] | None = None, fields: Mapping[str, object] | None = None,
) -> Iterator[tuple[bytes, bytes]]:  # fmt: skip
    """(key, value) listings with ids `<prefix>-<index>` (`digits` wide); endless when `count` is None.

    Titles cycle in order, or are drawn with `random.Random(seed)` when a seed is given; `unique_titles`
    appends " lot <index>" so no two share a cache entry. `event_time` None stamps the moment each record
    is built (generate lazily to stamp the moment it is produced), recorded in `stamps` (key -> epoch ms).
    """
    rng = random.Random(seed) if seed is not None else None
    for index in itertools.count() if count is None else range(count):
        listing_id = f"{prefix}-{index:0{digits}d}"
        title = rng.choice(titles) if rng is not None else titles[index % len(titles)]
        if unique_titles:
            title = lot_title(title, index)
        key = listing_id.encode()
        stamp = event_time
        if stamp is None:
            now_ms = time.time_ns() // 1_000_000
            stamp = iso_ms(now_ms)
            if stamps is not None:
                stamps[key] = now_ms
        yield key, listing_value(listing_id, title, event_time=stamp, version=version, fields=fields)


def expect_output(records: Iterable[tuple[bytes, bytes]], kind: str = "valid") -> Iterator[Record]:
    """Valid listings as `Record`s that must each yield an attribute event (labelled by their key)."""
    for key, value in records:
        yield Record(key, value, Expected(key.decode(), kind, frozenset({OUTPUT})))


def sample_listings(count: int, *, seed: int = 7, version: int = 1, id_prefix: str = "L"
                    ) -> list[tuple[bytes, bytes]]:  # fmt: skip
    """The demo's and `enrich produce-sample`'s listings: fixture titles drawn at random, stamped now,
    six-digit ids (as in the demo's table), and an explicit null category_hint."""
    return list(listing_records(count, fixture_titles(distinct=False), prefix=id_prefix, digits=6,
                                version=version, seed=seed, fields={"category_hint": None}))  # fmt: skip


def valid_listings(count: int | None, *, prefix: str = "L", seed: int = 0, unique_titles: bool = False
                   ) -> Iterator[Record]:  # fmt: skip
    """The reliability suite's listings: fixture titles drawn at random (repeating, so the result cache
    hits) or each made unique (every one inferred), at a fixed event_time; each must yield output.
    Endless when `count` is None."""
    titles = fixture_titles(distinct=False)
    return expect_output(listing_records(count, titles, prefix=prefix, seed=seed, unique_titles=unique_titles,
                                         event_time=FIXED_EVENT_TIME))  # fmt: skip


def invalid_samples(id_prefix: str = "BAD") -> list[tuple[bytes | None, bytes | None]]:
    """One record per common failure: each must reach the dead-letter topic with its reason code."""
    ok = {
        "listing_id": f"{id_prefix}-4",
        "listing_version": 1,
        "title": "x",
        "event_time": "2026-01-01T00:00:00Z",
    }
    return [
        (
            f"{id_prefix}-1".encode(),
            b'{"listing_id": "' + id_prefix.encode() + b'-1", "title": ',
        ),  # invalid_json
        (f"{id_prefix}-2".encode(), b"\xff\xfe not utf-8"),  # invalid_utf8
        (f"{id_prefix}-3".encode(), orjson.dumps({"listing_id": f"{id_prefix}-3", "title": ""})),  # schema
        (f"{id_prefix}-4".encode(), orjson.dumps({**ok, "schema_version": 9})),  # unsupported version
        (None, orjson.dumps(ok)),  # missing_key
    ]
