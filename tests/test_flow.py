"""Circuit breaker, backoff and retry-until-success: pure logic, driven by a fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from workers.contract.errors import BackendUnavailable, EnrichError
from workers.runtime.resilience import CLOSED, HALF_OPEN, OPEN, Backoff, CircuitBreaker, retry_until_success


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class NotRetriable(EnrichError):
    retriable = False


def test_breaker_opens_after_threshold_and_half_opens_after_reset() -> None:
    clock = FakeClock()
    states: list[str] = []
    breaker = CircuitBreaker(3, 5.0, clock=clock, on_state_change=states.append)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 4.9
    assert not breaker.allow()
    assert breaker.seconds_until_trial() == pytest.approx(0.1)
    clock.now = 5.0
    assert breaker.state == HALF_OPEN
    assert breaker.allow(), "half-open lets one trial through"
    assert not breaker.allow(), "...and only one while it is in progress"
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow()
    assert states == [OPEN, HALF_OPEN, CLOSED]


def test_breaker_failed_trial_reopens_for_another_period() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 2.0, clock=clock)
    breaker.record_failure()
    clock.now = 2.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN
    clock.now = 3.9
    assert not breaker.allow()
    clock.now = 4.0
    assert breaker.allow()


def test_breaker_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(2, 1.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_breaker_abandoned_trial_can_be_retried() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.allow()
    breaker.abandon_trial()
    assert breaker.allow()


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.delay(10_000) == 1.0


def test_backoff_jitter_stays_within_its_fraction() -> None:
    backoff = Backoff(initial_s=1.0, max_s=1.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.delay(0) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 100, "jitter spreads the delays"


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"initial_s": 2, "max_s": 1}, {"jitter": 1.5}])
def test_backoff_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def blocked(self) -> None:
        self.events.append("blocked")

    async def unblocked(self) -> None:  # async on purpose: both kinds of callback are accepted
        self.events.append("unblocked")


def _flaky(failures: int, exc: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return "done"

    return calls, call


def test_retry_until_success_retries_retriable_errors_and_pairs_callbacks() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(100, 1.0, clock=clock)
    recorder = Recorder()
    failures: list[EnrichError] = []
    calls, call = _flaky(4, BackendUnavailable("triton down"))
    result = asyncio.run(
        retry_until_success(
            call,
            breaker=breaker,
            backoff=Backoff(initial_s=0.1, max_s=0.3, jitter=0.0),
            on_blocked=recorder.blocked,
            on_unblocked=recorder.unblocked,
            on_failure=failures.append,
            sleep=clock.sleep,
        )
    )
    assert result == "done"
    assert len(calls) == 5
    assert len(failures) == 4
    assert recorder.events == ["blocked", "unblocked"]
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert breaker.state == CLOSED


def test_retry_until_success_does_not_block_when_the_first_call_succeeds() -> None:
    recorder = Recorder()
    calls, call = _flaky(0, BackendUnavailable("x"))
    result = asyncio.run(
        retry_until_success(
            call,
            breaker=CircuitBreaker(1, 1.0),
            backoff=Backoff(),
            on_blocked=recorder.blocked,
            on_unblocked=recorder.unblocked,
        )
    )
    assert result == "done" and len(calls) == 1 and recorder.events == []


def test_retry_until_success_waits_for_the_open_breaker_instead_of_calling() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 10.0, clock=clock)
    recorder = Recorder()
    calls, call = _flaky(2, BackendUnavailable("down"))
    asyncio.run(
        retry_until_success(
            call,
            breaker=breaker,
            backoff=Backoff(initial_s=0.5, max_s=1.0, jitter=0.0),
            on_blocked=recorder.blocked,
            on_unblocked=recorder.unblocked,
            sleep=clock.sleep,
        )
    )
    # two failures open the breaker; the third call happens only once it turns half-open at t=10.5
    assert len(calls) == 3
    assert clock.sleeps == pytest.approx([0.5, 10.0])
    assert recorder.events == ["blocked", "unblocked"]


def test_retry_until_success_propagates_non_retriable_errors_and_unblocks() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(5, 1.0, clock=clock)
    recorder = Recorder()

    attempts: list[int] = []

    async def call() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise BackendUnavailable("blip")
        raise NotRetriable("bad batch")

    with pytest.raises(NotRetriable):
        asyncio.run(
            retry_until_success(
                call,
                breaker=breaker,
                backoff=Backoff(jitter=0.0),
                on_blocked=recorder.blocked,
                on_unblocked=recorder.unblocked,
                sleep=clock.sleep,
            )
        )
    assert recorder.events == ["blocked", "unblocked"]
    assert breaker.state == CLOSED


def test_retry_until_success_unblocks_when_cancelled() -> None:
    recorder = Recorder()
    breaker = CircuitBreaker(1, 3600.0)

    async def never_succeeds() -> None:
        raise BackendUnavailable("down")

    async def scenario() -> None:
        task = asyncio.create_task(
            retry_until_success(
                never_succeeds,
                breaker=breaker,
                backoff=Backoff(initial_s=0.01, max_s=0.01),
                on_blocked=recorder.blocked,
                on_unblocked=recorder.unblocked,
            )
        )
        while recorder.events != ["blocked"]:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert recorder.events == ["blocked", "unblocked"]
