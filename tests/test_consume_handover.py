"""KafkaSource: a commit-policy call made while consume() runs is run by the consume thread.

confluent-kafka admits one thread into a consumer at a time (others wait in `Handle_serialize_enter`;
the consume thread's own callbacks re-enter). A rebalance callback runs inside consume() and waits for
the event loop, so a call from another thread that waits for the consumer while the callback waits for
that call never ends: a revoke in exactly-once mode hung in consumer_group_metadata(), and a zombie test's
worker hung in a commit that had started to wait just before the revoke callback began."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from workers.stages.consume import KafkaSource

_DEADLOCK_S = 5.0


class SerializingConsumer:
    """confluent-kafka's rule, with a bound: a call that would wait forever raises instead."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: list[tuple[str, int]] = []
        self.attempted = threading.Event()
        self.during_consume: Any = None

    def consume(self, max_messages: int, timeout_s: float) -> list[Any]:
        with self.lock:
            if self.during_consume is not None:
                self.during_consume()
            return []

    def _enter(self, name: str) -> None:
        self.attempted.set()
        if not self.lock.acquire(timeout=_DEADLOCK_S):
            raise TimeoutError(f"{name} waited for the consume thread, which waited for it: deadlock")
        self.lock.release()
        self.calls.append((name, threading.get_ident()))

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        self._enter("commit")
        if offsets == ["bad"]:
            raise ValueError("refused")

    def consumer_group_metadata(self) -> str:
        self._enter("consumer_group_metadata")
        return "metadata"


def _consume_thread_id(source: KafkaSource) -> int:
    return source._thread.submit(threading.get_ident).result()


def test_outside_consume_calls_run_on_the_callers_thread() -> None:
    consumer = SerializingConsumer()
    source = KafkaSource(consumer, "in")  # type: ignore[arg-type]
    source.commit(offsets=[], asynchronous=True)
    assert source.consumer_group_metadata() == "metadata"
    assert [thread for _, thread in consumer.calls] == [threading.get_ident()] * 2


def test_a_call_started_before_a_revoke_callback_is_run_by_the_waiting_callback() -> None:
    consumer = SerializingConsumer()
    source = KafkaSource(consumer, "in")  # type: ignore[arg-type]

    def revoke_waiting_on_a_commit() -> None:
        with ThreadPoolExecutor(1) as loop_thread:
            pending = loop_thread.submit(source.commit, offsets=["x"], asynchronous=False)
            while not consumer.attempted.is_set() and source._handover.empty():
                time.sleep(0.001)  # the commit is under way before the callback starts waiting
            source.wait_in_callback(pending)  # the drain awaits that very commit

    consumer.during_consume = revoke_waiting_on_a_commit
    source._thread.submit(source._consume, 10, 0.1).result(timeout=30)
    assert consumer.calls == [("commit", _consume_thread_id(source))]


def test_a_call_made_during_consume_runs_when_consume_returns_and_errors_reach_the_caller() -> None:
    consumer = SerializingConsumer()
    source = KafkaSource(consumer, "in")  # type: ignore[arg-type]
    calls: list[Future[Any]] = []
    with ThreadPoolExecutor(2) as other:  # each call waits in its own thread until it is run

        def call_from_another_thread() -> None:
            calls.append(other.submit(source.consumer_group_metadata))
            calls.append(other.submit(source.commit, offsets=["bad"], asynchronous=False))
            while source._handover.qsize() < 2:
                time.sleep(0.001)

        consumer.during_consume = call_from_another_thread
        source._thread.submit(source._consume, 10, 0.1).result(timeout=30)
        assert calls[0].result(timeout=10) == "metadata"
        with pytest.raises(ValueError, match="refused"):
            calls[1].result(timeout=10)
    consume_thread = _consume_thread_id(source)
    assert consumer.calls == [("consumer_group_metadata", consume_thread), ("commit", consume_thread)]
