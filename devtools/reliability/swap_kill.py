"""Where the model-swap scenario's kill -9 lands, chosen by observation rather than by the clock.

A kill a fixed 0.05-0.8 s after `rollout set` returned never hit the preparation: in every run the worker
had already reported the new model by then. So the scenario watches the worker's
`enrich_model_swap_preparing` gauge (1 from the swap's start until its model is loaded, its backend built
and its probe inference checked) and kills the moment it reads 1. `watch_preparation` scrapes /metrics
every WATCH_EVERY_S; it gives up (the caller then kills at once) when the worker's done-swaps counter
moved (the preparation fell between two scrapes), the worker reported the digest, or WATCH_LIMIT_S passed.

`kill_landing` then says where the kill landed, from the evidence, not from the intent: the killed
incarnation's own log (the "model swapped" line comes after the switch and before the report), its
report on the control topic, and the last scrape before the kill.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from devtools.reliability.network_scenarios import scrape

__all__ = ["PREPARING", "SWAPS_DONE", "SWAPS_TOTAL", "Watch", "kill_landing", "prepare_times_ms",
           "swaps_done", "watch_preparation"]  # fmt: skip

PREPARING = "enrich_model_swap_preparing"
SWAPS_TOTAL = "enrich_model_swaps_total"
SWAPS_DONE = f'{SWAPS_TOTAL}{{outcome="done"}}'
WATCH_EVERY_S = 0.005  # between the end of one scrape and the next (a scrape itself takes a few ms)
WATCH_LIMIT_S = 5.0  # the worker sees the record within milliseconds of the set: 5 s means something else
_CONTROL_EVERY_S = 0.1  # how often the watch reads the control topic for the worker's report
_SWAPPED = "model swapped"
_PREPARED = re.compile(r"prepared in ([0-9.]+)s")


@dataclass(frozen=True)
class Watch:
    """What the watch saw: `preparing_after_ms` from its start to the scrape that read the gauge at 1
    (None: never), else why it gave up (`switched`, `reported`, `timeout`); `scrapes` answered."""

    preparing_after_ms: float | None
    gave_up: str
    scrapes: int


def swaps_done(url: str) -> float:
    """The worker's done-swaps counter now (0 when /metrics does not answer)."""
    return (scrape(url, (SWAPS_TOTAL,)) or {}).get(SWAPS_DONE, 0.0)


def watch_preparation(url: str, done_before: float, reported: Callable[[], bool]) -> Watch:
    """Scrape `url` until the worker prepares a model (return at once: the caller kills), its done-swaps
    counter passes `done_before`, `reported()` is true, or WATCH_LIMIT_S passed."""
    start = time.monotonic()
    next_control, scrapes = start, 0
    while (now := time.monotonic()) < start + WATCH_LIMIT_S:
        values = scrape(url, (PREPARING, SWAPS_TOTAL), timeout_s=1)
        if values is not None:
            scrapes += 1
            if values.get(PREPARING) == 1.0:
                return Watch(round((time.monotonic() - start) * 1000, 1), "", scrapes)
            if values.get(SWAPS_DONE, 0.0) > done_before:
                return Watch(None, "switched", scrapes)
        if now >= next_control:
            next_control = now + _CONTROL_EVERY_S
            if reported():
                return Watch(None, "reported", scrapes)
        time.sleep(WATCH_EVERY_S)
    return Watch(None, "timeout", scrapes)


def _messages(log_text: str) -> list[str]:
    """The messages of the worker's JSON log lines (the harness's own lines are not JSON)."""
    return [str(orjson.loads(line).get("msg", "")) for line in log_text.splitlines() if line.startswith("{")]


def kill_landing(watch: Watch, killed_log: str, reported: bool) -> str:
    """Where the kill landed: `after report` (the killed incarnation reported the new digest), `after
    switch` (it logged the switch, not yet reported), `preparing` (the scrape just before the kill read the
    gauge at 1 and the log shows no switch), else `before preparing` (never seen preparing).
    `killed_log`: what the killed incarnation logged from the set to its death."""
    if reported:
        return "after report"
    if any(message.startswith(_SWAPPED) for message in _messages(killed_log)):
        return "after switch"
    return "preparing" if watch.preparing_after_ms is not None else "before preparing"


def prepare_times_ms(log_text: str) -> list[float]:
    """Each completed swap's preparation (model load, backend, probe), as the worker logged it."""
    times = []
    for message in _messages(log_text):
        found = _PREPARED.search(message) if message.startswith(_SWAPPED) else None
        if found:
            times.append(round(float(found.group(1)) * 1000, 1))
    return times
