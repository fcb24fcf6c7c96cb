"""Pure logic of the chaos harness: the accounting, and the hostile records' promised outcomes."""

from __future__ import annotations

from collections import Counter

import pytest

from devtools.harness.listings import OUTPUT, Expected, valid_listings
from devtools.reliability.cli import (
    EXIT_CHECK_FAILED,
    EXIT_DATA_LOSS,
    EXIT_OK,
    EXIT_SCENARIO_BROKE,
    exit_code,
)
from devtools.reliability.hostile import HOSTILE_KINDS, HUGE_KINDS, hostile_records, mixed
from devtools.reliability.ledger import InFlightWindow, Tally, count_outcomes
from devtools.reliability.run import ScenarioResult
from devtools.reliability.scenarios import SMALL_WINDOW
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


def test_a_record_that_failed_to_produce_counts_as_input_and_fails_the_run() -> None:
    tally = count_outcomes({(0, 0): _valid("A")}, {"A": 1}, {}, produce_failed=2)
    assert (tally.events_in, tally.produce_failed, tally.lost) == (3, 2, 0)
    assert _result(tally).problems() == ["2 failed produces, 0 producer errors"]


# ---- the duplicate bound: a simulated kill run at 100 listings/s, kills at 5, 10 and 15 s ----------------

RATE, KILLS = 100, ((5.0, 5.0), (10.0, 10.0), (15.0, 15.0))
N = 2000  # listings; listing i is first finished at i / RATE s


def _kill_run(redelivered: list[int]) -> tuple[Tally, list[float]]:
    """Outputs of a worker that, after kill k, re-processes the `redelivered[k]` listings finished last
    before it (duplicates), then carries on; every listing finished once besides."""
    placed = {(0, i): _valid(f"K-{i}") for i in range(N)}
    outputs = Counter(f"K-{i}" for i in range(N))
    times = [i / RATE for i in range(N)]
    for (kill, _), count in zip(KILLS, redelivered, strict=True):
        done = int(kill * RATE)
        outputs.update(f"K-{i}" for i in range(done - count, done))
        times += [kill + 3.0] * count  # re-processed after the ~3 s recovery
    return count_outcomes(placed, outputs, {}), times


def _result(tally: Tally, times: list[float] | None = None, window: InFlightWindow | None = None,
            faults: tuple[tuple[float, float], ...] = ()) -> ScenarioResult:  # fmt: skip
    return ScenarioResult("kill", tally, [], 0, 0, 1.0, True, window=window, faults=list(faults),
                          output_times=times or [])  # fmt: skip


def test_the_in_flight_window_is_the_unfinished_work_plus_what_finished_since_the_last_commit() -> None:
    window = InFlightWindow.of_worker(SMALL_WINDOW)
    assert window == InFlightWindow(max_pending=64, consume_max_messages=32, commit_interval_ms=200)
    _, times = _kill_run([0, 0, 0])
    # 0.2 s commit interval + 0.5 s slack at 100/s: 70 outputs (71: the span's both ends count) before each.
    assert window.per_fault(KILLS, times) == [64 + 32 + InFlightWindow.SLOP + 71] * 3
    # A fault that lasts (a broker down: commits fail meanwhile) also counts what finished during it.
    assert window.per_fault([(5.0, 7.0)], times) == [64 + 32 + InFlightWindow.SLOP + 271]
    assert window.per_fault([], times) == []


def test_a_committing_worker_stays_within_the_bound_one_that_never_commits_does_not() -> None:
    window = InFlightWindow.of_worker(SMALL_WINDOW)
    # Committing: a kill re-delivers what was in flight, at most one window each (here 150 of 177).
    tally, times = _kill_run([150, 150, 150])
    assert _result(tally, times, window, KILLS).problems() == []
    # Never committing: each kill re-delivers everything done before it (500 + 1,000 + 1,500).
    tally, times = _kill_run([int(kill * RATE) for kill, _ in KILLS])
    result = _result(tally, times, window, KILLS)
    assert (tally.duplicates, result.duplicate_bound) == (3000, 531)
    assert result.problems() == ["3000 duplicates > bound 531"]
    # Exactly-once (no window: the ledger reads read_committed) allows none; no fault allows none either.
    tally, times = _kill_run([1, 0, 0])
    assert _result(tally, times, None, KILLS).problems() == ["1 duplicates > bound 0"]
    assert _result(tally, times, window, ()).problems() == ["1 duplicates > bound 0"]


def test_enrich_chaos_exits_non_zero_on_loss_excess_duplicates_unknown_records_and_failed_produces() -> None:
    placed = {(0, 0): _valid("A"), (0, 1): _valid("B")}
    clean = _result(count_outcomes(placed, {"A": 1, "B": 1}, {}))
    assert exit_code([clean]) == EXIT_OK
    assert exit_code([clean], broke=["hostile"]) == EXIT_SCENARIO_BROKE
    lost = _result(count_outcomes(placed, {"A": 1}, {}))
    duplicated = _result(count_outcomes(placed, {"A": 2, "B": 1}, {}))
    assert exit_code([duplicated, lost], broke=["hostile"]) == EXIT_DATA_LOSS  # loss outranks the rest
    assert len({EXIT_OK, EXIT_DATA_LOSS, EXIT_CHECK_FAILED, EXIT_SCENARIO_BROKE, 2}) == 5
    failing = {
        "duplicated": count_outcomes(placed, {"A": 2, "B": 1}, {}),
        "unknown": count_outcomes(placed, {"A": 1, "B": 1, "ghost": 1}, {}),
        "produce failed": count_outcomes(placed, {"A": 1, "B": 1}, {}, produce_failed=1),
    }
    for what, tally in failing.items():
        assert exit_code([clean, _result(tally)], broke=["hostile"]) == EXIT_CHECK_FAILED, what


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
