"""Shortened chaos scenarios (issue 5) on the real services: nothing lost, the worker recovers by itself.

Each runs `enrich worker` as a subprocess with the tiny model and accounts for every produced record by
reading the output and DLQ topics to the end (devtools/reliability/). Full-size figures: `enrich chaos all`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.reliability.ledger import InFlightWindow
from devtools.reliability.report import format_details
from devtools.reliability.run import ScenarioResult, Services
from devtools.reliability.scenarios import SMALL_WINDOW, ChaosOptions, run_scenario
from devtools.services.kafka import KafkaCluster
from devtools.services.redis_server import RedisServer

pytestmark = pytest.mark.services

QUICK = ChaosOptions(size=1500, rate=150, kills=3, kill_delay_s=(0.5, 1.5), outage_s=5, hostile=600,
                     huge_payloads=4, session_timeout_ms=3000, timeout_s=120)  # fmt: skip
# At least 20 s of traffic; the kill scenario keeps it flowing until the last kill (each takes a recovery,
# session timeout + start, and a random pause), however slow the machine.
KILLS = dataclasses.replace(QUICK, size=2000, rate=100)
# Kills judged against a small in-flight window, which a worker that stopped committing exceeds.
SMALL_KILLS = dataclasses.replace(KILLS, worker_env=SMALL_WINDOW)
PEAK_RSS_BOUND = 1024 * 2**20  # a worker holding a few 10 MB payloads stays far below this


def explain(result: ScenarioResult) -> str:
    log = Path(str(result.details["worker_log"]))
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else ""
    return f"{format_details(result)}\n--- worker log tail ---\n{tail}"


def assert_nothing_lost(result: ScenarioResult) -> None:
    tally = result.tally
    assert tally.events_in > 0, explain(result)
    assert (tally.lost, tally.wrong_outcome, tally.unknown) == (0, 0, 0), explain(result)
    assert result.problems() == [], explain(result)  # also: duplicates within the bound, no failed produce
    assert result.deaths == 0, explain(result)
    assert result.complete and result.details["final_exit_code"] == 0, explain(result)


@contextlib.contextmanager
def own_cluster(tmp_path: Path, nodes: int) -> Iterator[KafkaCluster]:
    kafka = KafkaCluster(tmp_path / "kafka", nodes=nodes).start()
    try:
        yield kafka
    finally:
        kafka.stop(graceful=False)  # throwaway: skip the controlled shutdown (seconds as the quorum shrinks)


@pytest.fixture
def services(kafka: KafkaCluster, tiny_model_dir: Path, tmp_path: Path) -> Iterator[Services]:
    """The session broker and model; a Redis of its own (scenarios may stop it)."""
    with RedisServer(tmp_path / "redis") as redis:
        yield Services(kafka, redis, tiny_model_dir, tmp_path)


def assert_kills_within_the_window(result: ScenarioResult) -> None:
    assert_nothing_lost(result)
    assert result.details["kills"] == SMALL_KILLS.kills == len(result.faults), explain(result)
    assert result.window == InFlightWindow.of_worker(SMALL_WINDOW), explain(result)
    assert result.tally.duplicates <= result.duplicate_bound, explain(result)


def test_kill_9_loses_nothing_and_duplicates_stay_within_the_in_flight_window(services: Services) -> None:
    assert_kills_within_the_window(run_scenario("kill", services, SMALL_KILLS))


def test_kill_9_on_inference_in_flight_loses_nothing(services: Services) -> None:
    # Unique titles: every listing inferred; only a re-delivered one can hit the cache (its result was stored
    # before the kill, whether or not its event was out), and a kill re-delivers at most its window.
    result = run_scenario("kill-unique", services, SMALL_KILLS)
    assert_kills_within_the_window(result)
    assert int(str(result.details["cache_hits"])) <= result.duplicate_bound, explain(result)


def test_the_duplicate_bound_fails_a_worker_that_never_commits(services: Services) -> None:
    # A commit every ~28 h: each restart re-delivers everything done before the kill. Judged by the small
    # window's settings it must fail (the run's own settings allow it all).
    never = {**SMALL_WINDOW, "ENRICH_COMMIT_INTERVAL_MS": str(10**8)}
    result = run_scenario("kill", services, dataclasses.replace(SMALL_KILLS, worker_env=never))
    assert result.details["kills"] == SMALL_KILLS.kills and result.tally.lost == 0, explain(result)
    judged = dataclasses.replace(result, window=InFlightWindow.of_worker(SMALL_WINDOW))
    assert result.problems() == [], explain(result)
    assert judged.problems() == [f"{result.tally.duplicates} duplicates > bound {judged.duplicate_bound}"]


def test_exactly_once_under_kills_shows_each_listing_once(services: Services) -> None:
    result = run_scenario("exactly-once", services, dataclasses.replace(KILLS, kills=2))
    assert_nothing_lost(result)
    assert result.details["kills"] == 2, explain(result)
    assert result.tally.duplicates == 0, explain(result)
    assert result.tally.attribute_events == result.tally.events_in >= KILLS.size, explain(result)


def test_redis_outage_loses_nothing(services: Services) -> None:
    result = run_scenario("redis-outage", services, QUICK)
    assert_nothing_lost(result)
    assert len(result.recovery_s) == 1, explain(result)


def test_triton_outage_loses_nothing_and_the_worker_recovers_by_itself(
    services: Services, triton_factory, tiny_triton_repo: Path
) -> None:
    services.triton = triton_factory(tiny_triton_repo)
    result = run_scenario("triton-outage", services, QUICK)
    assert_nothing_lost(result)
    assert len(result.recovery_s) == 1, explain(result)


@pytest.mark.parametrize(
    ("scenario", "nodes"),
    [("broker-restart", 1), ("broker-failover", 3)],
    ids=["broker-restart-loses-nothing", "one-of-three-brokers-killed-loses-nothing"],
)
def test_broker_loss_loses_nothing(
    scenario: str, nodes: int, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Its own cluster: the session broker must stay up for the other tests.
    with own_cluster(tmp_path, nodes=nodes) as kafka:
        services = Services(kafka, redis_server, tiny_model_dir, tmp_path)
        result = run_scenario(scenario, services, QUICK)
    assert_nothing_lost(result)
    assert len(result.recovery_s) == 1, explain(result)


def test_hostile_inputs_are_dead_lettered_with_reasons_and_the_worker_never_dies(services: Services) -> None:
    result = run_scenario("hostile", services, QUICK)
    assert_nothing_lost(result)  # every valid one processed, every invalid one in the DLQ with its code
    assert result.tally.duplicates == 0, explain(result)
    assert result.tally.dlq_codes.get("payload_too_large", 0) >= QUICK.huge_payloads, explain(result)
    assert 0 < result.peak_rss_bytes < PEAK_RSS_BOUND, explain(result)


# Two workers; one SIGSTOPped until the group drops it. Paced to keep flowing through the stop, the
# takeover and the rejoin (session timeout 3 s, twice, plus the rebalances).
TAKEOVER = dataclasses.replace(QUICK, size=2000, rate=100, outage_s=8)


def assert_takeover(result: ScenarioResult) -> None:
    assert_nothing_lost(result)
    details = result.details
    assert details["dropped"] and details["rejoined"], explain(result)  # the partitions were lost, and back
    assert (details["other_deaths"], details["other_exit_code"]) == (0, 0), explain(result)


def test_exactly_once_shows_each_listing_once_after_partition_loss_and_a_broker_kill(
    redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with own_cluster(tmp_path, nodes=3) as kafka:
        services = Services(kafka, redis_server, tiny_model_dir, tmp_path)
        result = run_scenario("exactly-once-failover", services, TAKEOVER)
    assert_takeover(result)
    assert result.tally.duplicates == 0, explain(result)
    assert result.tally.attribute_events == TAKEOVER.size, explain(result)


def test_a_zombie_worker_loses_nothing_and_duplicates_stay_within_its_in_flight_window(
    services: Services,
) -> None:
    result = run_scenario("zombie", services, dataclasses.replace(TAKEOVER, worker_env=SMALL_WINDOW))
    assert_takeover(result)
    assert 0 < result.duplicate_bound < TAKEOVER.size, explain(result)  # a bound that can fail
    assert result.tally.duplicates <= result.duplicate_bound, explain(result)


# Three swaps A -> B -> A -> B between two tiny models under 100 listings/s, a kill -9 during one swap to B;
# the small window bounds the kill's duplicates.
SWAPS = dataclasses.replace(KILLS, kills=1, kill_delay_s=(1.0, 2.5), worker_env=SMALL_WINDOW)
KILL_LANDINGS = {"preparing", "after switch", "after report", "before preparing"}


def test_model_swaps_under_load_with_a_kill_serve_each_listing_with_the_model_in_force(
    services: Services, other_tiny_model_dir: Path
) -> None:
    services.other_model_dir = other_tiny_model_dir
    result = run_scenario("model-swap", services, SWAPS)
    assert_nothing_lost(result)  # also: every model rule (details: out_of_force, went_back, late_old)
    details = result.details
    assert (details["swaps_done"], details["kills"], len(result.faults)) == (3, 1, 1), explain(result)
    assert details["mixed_batches"] == 0 and details["out_of_force"] == 0, explain(result)
    assert 0 < result.duplicate_bound < result.tally.events_in, explain(result)  # a bound that can fail
    per_digest = details["events_per_digest"]
    assert isinstance(per_digest, dict) and len(per_digest) == 2, explain(result)  # both models served
    assert len(details["swap_pause_ms"]) == 2, explain(result)  # type: ignore[arg-type]
    # Where the kill landed, by the evidence (swap_kill.py); every done swap's preparation was logged.
    assert details["kill_landed"] in KILL_LANDINGS, explain(result)
    assert len(details["prepare_ms"]) >= 3, explain(result)  # type: ignore[arg-type]
