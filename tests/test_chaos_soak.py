"""The soak scenario, shortened (issue 15): 30 s at 70 % of the measured capacity with a Redis outage and a
kill -9; nothing lost, the lag back to near 0 after each, RSS and open fds flat. Full size (30 minutes):
`enrich chaos soak` (devtools/reliability/soak.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from devtools.reliability.ledger import Tally
from devtools.reliability.run import ScenarioResult, Services
from devtools.reliability.scenarios import run_scenario
from devtools.reliability.soak import FD_SLACK, RSS_JUDGED_FROM_S, judge
from devtools.reliability.soak_series import CpuSplit, Sample, SoakEvent, cpu_by_quarter
from tests.test_chaos import QUICK, assert_nothing_lost, explain, services  # noqa: F401 (a fixture)

pytestmark = pytest.mark.services

# At half the measured capacity, not 70 %: on a shared two-core machine the capacity of back-to-back passes
# was measured at 1,341 and 2,904 listings/s, and a soak at 70 % of a 2,260/s pass could not keep up
# (1,350/s out of 1,582/s offered: the lag grew the whole run). The lag checks hold at any share.
SOAK = dataclasses.replace(QUICK, size=6000, duration_s=30, kills=1, outage_s=2, unique_titles=True,
                           capacity_share=0.5)  # fmt: skip


def test_soak_at_70_percent_of_capacity_loses_nothing_and_stays_flat(services: Services) -> None:  # noqa: F811
    result = run_scenario("soak", services, SOAK)
    details = result.details
    assert_nothing_lost(result)  # also every check of the scenario's own: result.problems() == []
    assert len(result.faults) == SOAK.kills, explain(result)  # each kill recorded for the duplicate bound
    # The start, the Redis outage and the kill, each followed by the lag back to near 0.
    events = details["events"]
    assert [e.split("@")[0] for e in events] == ["start", "redis-outage", "kill"], explain(result)
    assert not any("back never" in e or "drained never" in e for e in events), explain(result)
    assert details["final_committed_lag"] == 0, explain(result)
    assert int(str(details["capacity_per_s"])) > 0 and int(str(details["output_per_s"])) > 0, explain(result)
    # The series exist, from both incarnations of the worker and from its own lag gauge, and are plotted.
    series = json.loads(Path(str(details["series"])).read_text())
    samples = series["samples"]
    assert len(samples) >= 40, explain(result)  # every 0.5 s over 30+ s
    pids_seen = {(s["rss_bytes"] is not None, s["fds"] is not None) for s in samples}
    assert (True, True) in pids_seen, explain(result)
    assert sum(s["lag"] is not None for s in samples) >= len(samples) // 2, explain(result)
    assert series["worker_lag"], explain(result)
    assert Path(str(details["plot"])).stat().st_size > 0, explain(result)
    # Flat: the figures the checks judged, stated here so a change of tolerance shows.
    fds_q2, fds_q4 = details["fds_q2_q4"]
    assert fds_q4 - fds_q2 <= FD_SLACK, explain(result)
    assert float(str(details["rss_growth"])) > 0, explain(result)  # judged from RSS_JUDGED_FROM_S on


def _judged(rss_per_s: float, fds_per_s: float, lag: int, *, seconds: float = RSS_JUDGED_FROM_S) -> list[str]:
    """The soak's own checks on a synthetic 2 s series: 100 MiB and 30 fds growing by `*_per_s`, a
    committed lag of `lag`, one kill a third in (back after 2 s, near 0 after 5 s)."""
    t0 = 1_000.0
    samples = [Sample(t0 + t, int((100 + rss_per_s * t) * 2**20), int(30 + fds_per_s * t), lag)
               for t in range(0, int(seconds) + 1, 2)]  # fmt: skip
    kill = SoakEvent("kill", t0 + seconds / 3, end=t0 + seconds / 3, back=t0 + seconds / 3 + 2,
                     drained=t0 + seconds / 3 + 5)  # fmt: skip
    result = ScenarioResult("soak", Tally(1, 1, 0, 0, 0, 0, 0), [], 0, 0, seconds, complete=True)
    judge(result, samples, [kill], t0=t0, t_end=t0 + seconds, near_zero=500, final_lag=0,
          recovery_timeout_s=120, settle_s=4)  # fmt: skip
    return result.problems()


def test_the_soak_checks_fail_growing_rss_fds_and_lag() -> None:
    assert _judged(0, 0, 100) == []
    assert [p.split(" x")[0] for p in _judged(0.3, 0, 100)] == ["RSS grew"]  # +0.3 MiB/s: ~+18 % a minute
    assert [p.split(" by")[0] for p in _judged(0, 0.2, 100)] == ["open fds grew"]  # +24 in 120 s
    assert _judged(0, 0, 900) == ["steady lag 900 in the last quarter (> 500)"]
    assert _judged(0.3, 0, 100, seconds=60) == []  # too short to judge RSS (warm-up): reported only


def test_the_cpu_split_names_what_each_process_used_between_samples() -> None:
    split = CpuSplit(lambda: {"self": os.getpid(), "gone": None})
    assert "self" not in split.sample()  # the first call only sets the baseline
    deadline = time.process_time() + 1.0
    while time.process_time() < deadline:  # busy: this process uses one core meanwhile
        pass
    cores = split.sample()
    assert 0.2 < cores["self"] <= 1.2 and "gone" not in cores
    # /proc/stat counts the machine in clock ticks, sampled: over the 0.3 s this test once busied, that
    # read 0.984 cores against the process's own 1.05 (CI failed). Over 1 s the error is a few ticks.
    assert cores["machine"] >= cores["self"] - 0.1 and cores["other"] >= 0
    quarters = cpu_by_quarter([Sample(at, 1, 1, 0, {"self": at}) for at in (0.5, 1.5, 2.5, 3.5)], 0, 4)
    assert [q["self"] for q in quarters] == [0.5, 1.5, 2.5, 3.5]
