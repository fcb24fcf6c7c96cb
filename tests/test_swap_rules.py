"""The model-swap scenario's rules on hand-made timelines: each passes the legitimate case and fails the
fault it is there to catch (devtools/reliability/swap_rules.py); and where its kill lands
(devtools/reliability/swap_kill.py: the watch against a real /metrics endpoint, the verdict on hand-made
logs)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from devtools.reliability.swap_kill import Watch, kill_landing, prepare_times_ms, watch_preparation
from devtools.reliability.swap_rules import LATE_SLACK_S, OutEvent, Switch, check_models, swap_pauses
from workers.runtime.metrics import MetricsServer, WorkerMetrics, start_http_endpoint

A, B, C = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64
W = "w-0"
# Set B at 10, the worker switches at 11 and reports at 11.2; set A at 20, switch 20.5, report 20.6.
DESIRED = [(10.0, B), (20.0, A)]
SWITCHES = [Switch(W, A, 0.0, 0.1), Switch(W, B, 11.0, 11.2), Switch(W, A, 20.5, 20.6)]


def event(digest: str, produced: float, appended: float, offset: int, worker: str = W, partition: int = 0,
          ) -> OutEvent:  # fmt: skip
    return OutEvent(f"L-{offset}", digest, worker, produced, appended, partition, offset)


def check(events: list[OutEvent], switches: list[Switch] = SWITCHES, ended: dict[str, float] | None = None):
    return check_models(events, models=(A, B), configured=A, desired=DESIRED, switches=switches,
                        ended=ended or {})  # fmt: skip


def test_a_worker_following_its_swaps_passes() -> None:
    events = [
        event(A, 5.0, 5.1, 0),
        event(A, 10.5, 10.6, 1),  # produced after the set, before the switch: the old model still serves
        event(A, 10.9, 11.1, 2),  # an old batch finishing after the switch
        event(B, 11.1, 11.15, 3),
        event(B, 19.9, 20.55, 4),
        event(A, 20.7, 20.8, 5),
    ]
    result = check(events)
    assert not any(result.problems().values()), result
    assert result.counts == {A: 4, B: 2} and result.max_late_ms == 0


def test_an_event_stamped_with_the_old_model_after_the_switch_fails() -> None:
    events = [event(A, 5.0, 5.1, 0), event(B, 11.1, 11.15, 1), event(A, 12.0, 12.1, 2)]
    result = check(events, switches=SWITCHES[:2])
    assert len(result.out_of_force) == 1 and "L-2" in result.out_of_force[0]
    assert len(result.late_old) == 1  # appended 0.9 s after the report of the switch away from A
    assert result.went_back == [f"{W} partition 0"]  # A, B, A with one switch in between
    # With the later switch back to A the order alone is fine (A, B, A), the timing is not.
    later = check(events)
    assert later.out_of_force == result.out_of_force and later.late_old and not later.went_back


def test_a_model_served_before_it_was_set_fails() -> None:
    # Reported honestly, the switch itself is the fault; unreported, the event is.
    reported = check([event(B, 8.0, 8.1, 0)], switches=[Switch(W, B, 8.0, 8.1)])
    assert reported.undesired_switches and not reported.out_of_force
    silent = check([event(B, 8.0, 8.1, 0)], switches=[Switch(W, A, 0.0, 0.1)])
    assert silent.out_of_force and not silent.undesired_switches


def test_a_foreign_model_fails() -> None:
    assert check([event(C, 5.0, 5.1, 0)]).foreign == [f"L-0@{W}"]


def test_a_restarted_worker_may_serve_its_configured_model_until_it_follows() -> None:
    # Killed at 10.5 (before reporting B); restarted as w-1 on A, which reports B at 13.
    switches = [Switch(W, A, 0.0, 0.1), Switch("w-1", A, 10.6, 10.7), Switch("w-1", B, 12.9, 13.0)]
    events = [
        event(A, 9.0, 9.1, 0),
        event(B, 10.3, 10.4, 1),  # the killed one switched but never reported: B was desired
        event(A, 10.3, 11.0, 1, worker="w-1"),  # re-delivered, on the configured model
        event(A, 11.5, 12.0, 2, worker="w-1"),  # produced after the set, before w-1 followed
        event(B, 13.1, 13.2, 3, worker="w-1"),
    ]
    result = check(events, switches=switches, ended={W: 10.5})
    assert not any(result.problems().values()), result
    # The restarted worker going back to A by itself (no switch reported) fails.
    late = check([*events, event(A, 13.5, 13.6, 4, worker="w-1")], switches=switches, ended={W: 10.5})
    assert late.out_of_force and late.went_back and late.late_old


def test_old_model_events_just_after_the_report_are_within_the_slack() -> None:
    just = check([event(B, 11.1, 11.15, 0), event(A, 10.9, 11.2 + LATE_SLACK_S / 2, 1)])
    assert not just.late_old and 0 < just.max_late_ms <= LATE_SLACK_S * 1000
    late = check([event(B, 11.1, 11.15, 0), event(A, 10.9, 11.2 + LATE_SLACK_S * 2, 1)])
    assert late.late_old and not late.out_of_force  # its input came before the switch: only late


def test_the_pause_is_the_longest_gap_within_a_swap_and_the_steady_gaps_leave_swaps_out() -> None:
    times = [i * 0.01 for i in range(100)] + [1.5 + i * 0.01 for i in range(50)]  # 0.51 s gap at 0.99
    pauses = swap_pauses(times, [(0.95, 1.6)])
    assert pauses.per_swap_ms == [510.0]
    assert pauses.median_gap_ms == pauses.max_gap_ms == 10.0


@pytest.fixture
def endpoint() -> Iterator[tuple[WorkerMetrics, str]]:
    metrics = WorkerMetrics()
    server: MetricsServer = start_http_endpoint(metrics, 0, lambda: True, lambda: True)
    yield metrics, f"{server.url}/metrics"
    server.close()


def test_the_watch_returns_at_the_first_scrape_that_reads_the_worker_preparing(
    endpoint: tuple[WorkerMetrics, str],
) -> None:
    metrics, url = endpoint
    metrics.model_swap_preparing.set(1)
    watch = watch_preparation(url, 0.0, lambda: False)
    assert watch.preparing_after_ms is not None and watch.scrapes == 1 and not watch.gave_up


def test_the_watch_gives_up_when_the_swap_went_by_between_two_scrapes_or_was_reported(
    endpoint: tuple[WorkerMetrics, str],
) -> None:
    metrics, url = endpoint
    metrics.model_swaps.labels(outcome="done").inc()
    assert watch_preparation(url, 0.0, lambda: False) == Watch(None, "switched", 1)
    assert watch_preparation(url, 1.0, lambda: True) == Watch(None, "reported", 1)  # counter as before


def log(*messages: str) -> str:
    """A worker log as the harness sees it: its own start line, then the worker's JSON lines."""
    return "--- start 06:47:13 ---\n" + "".join(json.dumps({"ts": "t", "msg": m}) + "\n" for m in messages)


SWAPPED = ("model swapped sha256:84fdbe69039c -> sha256:263ebe7b84c4 (prepared in 0.023s, switched 0.004s "
           "later; old model's last batch 0.031s after the switch)")  # fmt: skip


def test_the_kill_landed_while_preparing_only_if_seen_preparing_and_the_switch_never_logged() -> None:
    seen, missed = Watch(12.0, "", 3), Watch(None, "timeout", 900)
    assert kill_landing(seen, log("partitions assigned: [0]"), reported=False) == "preparing"
    assert kill_landing(seen, log(SWAPPED), reported=False) == "after switch"  # done between scrape and kill
    assert kill_landing(Watch(None, "switched", 4), log(SWAPPED), reported=False) == "after switch"
    assert kill_landing(Watch(None, "reported", 9), log(SWAPPED), reported=True) == "after report"
    assert kill_landing(missed, log(), reported=False) == "before preparing"


def test_the_preparation_times_come_from_the_swap_lines_of_every_incarnation() -> None:
    text = log(SWAPPED, "partitions revoked: [0]") + log(SWAPPED.replace("0.023s", "1.5s"))
    assert prepare_times_ms(text) == [23.0, 1500.0]
    assert prepare_times_ms(log("model swap to sha256:aa failed; keeping sha256:bb: prepared in 1s")) == []
