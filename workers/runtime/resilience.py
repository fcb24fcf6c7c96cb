"""Flow control for calls to the inference backend: circuit breaker, backoff, retry-until-success.

Nothing is ever dropped: a batch whose backend call fails with a retriable error is retried until it
succeeds. While it waits the pipeline is told (``on_blocked``) so it can pause the Kafka partitions, and
told again (``on_unblocked``) when the wait is over so it can resume them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from workers.contract.errors import EnrichError

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "Backoff",
    "CircuitBreaker",
    "retry_until_success",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive failures -> half-open after ``reset_after_s``.

    In half-open state exactly one trial call is allowed at a time; its success closes the breaker, its
    failure opens it again for another ``reset_after_s``. Shared by all batches of one worker, so while
    the backend is down only one request probes it instead of every batch in flight.
    """

    def __init__(
        self,
        failure_threshold: int,
        reset_after_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[str], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_after_s < 0:
            raise ValueError(f"reset_after_s must be >= 0, got {reset_after_s}")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_in_progress = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (an open breaker turns half-open once its time is up)."""
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_after_s:
            self._set_state(HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the backend now. In half-open state this reserves the single trial."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._trial_in_progress:
            self._trial_in_progress = True
            return True
        return False

    def record_success(self) -> None:
        self._consecutive_failures = 0
        self._trial_in_progress = False
        if self._state != CLOSED:
            self._set_state(CLOSED)

    def record_failure(self) -> None:
        self._consecutive_failures += 1
        self._trial_in_progress = False
        if self._state == HALF_OPEN or self._consecutive_failures >= self.failure_threshold:
            self._opened_at = self._clock()
            if self._state != OPEN:
                self._set_state(OPEN)

    def abandon_trial(self) -> None:
        """Give back a half-open trial whose call ended without an answer (cancelled, or a bug)."""
        self._trial_in_progress = False

    def seconds_until_trial(self) -> float:
        """How long until an open breaker lets a trial call through (0 when not open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.reset_after_s - (self._clock() - self._opened_at))

    def _set_state(self, state: str) -> None:
        log.info("circuit breaker %s -> %s", self._state, state, extra={"breaker_state": state})
        self._state = state
        if self._on_state_change is not None:
            self._on_state_change(state)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter and a cap: attempt n waits about ``initial_s * multiplier**n``.

    ``jitter`` is the fraction of the delay that is randomised (0 = none, 1 = "full jitter"), so that
    workers retrying against the same backend spread out instead of retrying in lockstep.
    """

    initial_s: float = 0.1
    max_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {self.initial_s=} {self.max_s=}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); never above ``max_s``."""
        # Cap the exponent too, so a backend that is down for days cannot overflow the float.
        exponent = min(attempt, 64)
        base = min(self.max_s, self.initial_s * self.multiplier**exponent)
        return base * (1.0 - self.jitter * self.rng.random())


async def _maybe_await(callback: Callable[[], object]) -> None:
    result = callback()
    if inspect.isawaitable(result):
        await result


async def retry_until_success(
    call: Callable[[], Awaitable[T]],
    *,
    breaker: CircuitBreaker,
    backoff: Backoff,
    on_blocked: Callable[[], object],
    on_unblocked: Callable[[], object],
    on_failure: Callable[[EnrichError], object] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``call`` until it succeeds, retrying retriable :class:`EnrichError` forever.

    - A retriable failure is recorded on the breaker, reported to ``on_failure`` (e.g. a metrics
      counter) and followed by a backoff sleep. While the breaker is open no call is made; the wait is at
      least until the breaker's next trial.
    - ``on_blocked()`` is called once, the first time this call cannot make progress (a failure or an
      open breaker); ``on_unblocked()`` is called once after that when the wait ends — on success, on a
      non-retriable error, or on cancellation — so the two always come in pairs.
    - Non-retriable errors (and any other exception) propagate unchanged, after recording a breaker
      success: the backend answered, the request itself was bad.
    Callbacks may be plain functions or coroutine functions.
    """
    attempt = 0
    blocked = False
    try:
        while True:
            if breaker.allow():
                try:
                    result = await call()
                except EnrichError as exc:
                    if not exc.retriable:
                        breaker.record_success()
                        raise
                    breaker.record_failure()
                    if on_failure is not None:
                        on_failure(exc)
                    log.warning("backend call failed (attempt %d): %s", attempt + 1, exc)
                except BaseException:
                    breaker.abandon_trial()
                    raise
                else:
                    breaker.record_success()
                    return result
            if not blocked:
                blocked = True
                await _maybe_await(on_blocked)
            await sleep(max(backoff.delay(attempt), breaker.seconds_until_trial()))
            attempt += 1
    finally:
        if blocked:
            await _maybe_await(on_unblocked)
