"""Pure logic of the chaos harness: the accounting, and the hostile records' promised outcomes."""

from __future__ import annotations

from collections import Counter

import pytest

from devtools.harness.listings import OUTPUT, Expected, valid_listings
from devtools.reliability.hostile import HOSTILE_KINDS, HUGE_KINDS, hostile_records, mixed
from devtools.reliability.ledger import count_outcomes
from workers.contract.errors import ValidationFailed
from workers.stages.validate import ListingValidator


def _valid(label: str) -> Expected:
    return Expected(label, "valid", frozenset({OUTPUT}))


def test_count_outcomes_finds_lost_duplicated_wrong_and_unknown_records() -> None:
    placed = {
        (0, 0): _valid("A"),  # one event: fine
        (0, 1): _valid("B"),  # three events: two duplicates
        (0, 2): _valid("C"),  # nothing: lost
        (1, 0): Expected("H-1", "invalid_json", frozenset({"dlq:invalid_json"})),  # dead-lettered: fine
        (1, 1): Expected("H-2", "empty_title", frozenset({"dlq:schema_violation"})),  # wrong code
        (1, 2): _valid("D"),  # a valid listing dead-lettered: wrong outcome
    }
    outputs = {"A": 1, "B": 3, "ghost": 1}
    dead = {(1, 0): ["invalid_json"], (1, 1): ["invalid_json"], (1, 2): ["schema_violation"], (9, 9): ["x"]}

    tally = count_outcomes(placed, outputs, dead)

    assert (tally.events_in, tally.attribute_events, tally.dlq) == (6, 5, 4)
    assert (tally.lost, tally.lost_examples) == (1, ["C"])
    assert tally.duplicates == 2
    assert tally.wrong_outcome == 2
    assert tally.unknown == 2  # the "ghost" event and the DLQ record of a position never produced
    assert tally.dlq_codes == {"invalid_json": 2, "schema_violation": 1, "x": 1}


def test_an_attribute_event_does_not_account_for_a_hostile_record_with_the_same_id() -> None:
    # Only listings expected to produce output are matched by listing_id; anything else by position.
    placed = {(0, 0): Expected("H-1", "null_key", frozenset({"dlq:missing_key"}))}
    tally = count_outcomes(placed, {"H-1": 1}, {})
    assert (tally.lost, tally.unknown) == (1, 1)


@pytest.mark.parametrize("kind", [*HOSTILE_KINDS, *HUGE_KINDS])
def test_each_hostile_kind_meets_the_outcome_the_validator_gives(kind: str) -> None:
    key, value, accepted = {**HOSTILE_KINDS, **HUGE_KINDS}[kind]("H-0000001")
    try:
        ListingValidator().validate(value, key)
        outcome = OUTPUT
    except ValidationFailed as exc:
        outcome = f"dlq:{exc.code}"
    assert outcome in accepted


def test_hostile_records_mix_every_kind_into_valid_traffic_once_each() -> None:
    bad = hostile_records(2 * len(HOSTILE_KINDS) + 4, huge=4, seed=3, huge_kinds=("key_2mb",))
    kinds = Counter(record.expected.kind for record in bad)
    assert kinds["key_2mb"] == 4 and all(kinds[kind] == 2 for kind in HOSTILE_KINDS)
    stream = list(mixed(valid_listings(50, seed=1), bad, seed=2))
    assert len(stream) == 50 + len(bad)
    valid_labels = [r.expected.label for r in stream if r.expected.kind == "valid"]
    assert valid_labels == [f"L-{i:07d}" for i in range(50)]  # in order
    assert sorted(r.expected.label for r in stream if r.expected.kind != "valid") == sorted(
        r.expected.label for r in bad
    )
