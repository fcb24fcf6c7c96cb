"""The fast accept-only check never accepts what the schema (fastjsonschema) rejects."""

from __future__ import annotations

import itertools

import fastjsonschema
import orjson
import pytest

from devtools.harness.listings import sample_listings
from workers.contract.events import Listing, load_schema
from workers.stages.validate import _is_rfc3339
from workers.stages.validate_fast import compile_fast_check

SCHEMA = load_schema("listing")
REPLACEMENTS = [
    None, "", " ", "\t\n", "ok", "x" * 128, "x" * 129, "t" * 512, "t" * 513, "bad id!", "L-1\n",
    0, -1, 1, 3.0, 2.5, True, False, 2**53 - 1, 2**53, [], {}, "2026-11-29T07:05:00Z", "2026-11-29T07:05:00",
    "2026-13-01T00:00:00Z", "2026-11-29T07:05:00+0100", "9" * 41,
]


@pytest.fixture(scope="module")
def checks() -> tuple:
    fast = compile_fast_check(SCHEMA, _is_rfc3339, Listing, Listing._fields)
    assert fast is not None
    return fast, fastjsonschema.compile(SCHEMA, formats={"date-time": _is_rfc3339})


def is_valid(full, data: dict) -> bool:
    try:
        full(data)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def test_sample_listings_take_the_fast_path(checks: tuple) -> None:
    fast, full = checks
    for _, value in sample_listings(50):
        data = orjson.loads(value)
        listing = fast(data)
        assert listing is not None and is_valid(full, data)
        assert listing == Listing(*(data.get(name) for name in Listing._fields))


def test_fast_check_is_never_more_permissive_than_the_schema(checks: tuple) -> None:
    fast, full = checks
    base = orjson.loads(sample_listings(1)[0][1])
    names = [*SCHEMA["properties"], "unknown_field"]
    mutations = [{**base, name: value} for name, value in itertools.product(names, REPLACEMENTS)]
    mutations += [{k: v for k, v in base.items() if k != name} for name in names]
    accepted_fast = 0
    for data in mutations:
        if fast(data) is not None:
            accepted_fast += 1
            assert is_valid(full, data), data
    assert accepted_fast > len(names)  # the fast path does accept valid variants


def test_schemas_outside_the_flat_subset_get_no_fast_path() -> None:
    def compiled(schema: dict) -> object:
        return compile_fast_check(schema, _is_rfc3339, Listing, Listing._fields)

    assert compiled(load_schema("listing-attributes")) is None
    assert compiled({**SCHEMA, "additionalProperties": False}) is None
    odd = {**SCHEMA, "properties": {**SCHEMA["properties"], "title": {"type": "string", "enum": ["a"]}}}
    assert compiled(odd) is None
    assert compile_fast_check(SCHEMA, _is_rfc3339, Listing, ["not_a_property"]) is None
