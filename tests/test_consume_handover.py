"""KafkaSource: a commit-policy call made while a rebalance callback waits runs on the consume thread.

confluent-kafka admits one thread into a consumer at a time; the consume thread is inside consume() for
the whole callback, so a call from another thread would wait for it forever (a revoke in exactly-once
mode hung in consumer_group_metadata() before this hand-over)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from workers.stages.consume import KafkaSource


class ThreadRecordingConsumer:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        self.threads.append(threading.get_ident())
        if offsets == ["bad"]:
            raise ValueError("refused")

    def consumer_group_metadata(self) -> str:
        self.threads.append(threading.get_ident())
        return "metadata"


def test_calls_during_a_callback_are_handed_to_the_consume_thread_and_outside_run_in_place() -> None:
    consumer = ThreadRecordingConsumer()
    source = KafkaSource(consumer, "in")  # type: ignore[arg-type]
    source.commit(offsets=[], asynchronous=True)  # no callback waiting: runs on the caller's thread
    assert consumer.threads == [threading.get_ident()]

    done: Future[str] = Future()
    with ThreadPoolExecutor(1) as consume:
        consume_thread = consume.submit(threading.get_ident).result()
        parked = consume.submit(source.wait_in_callback, done)
        while source._handover is None:  # until the callback waits
            time.sleep(0.001)
        with ThreadPoolExecutor(1) as other:
            assert other.submit(source.consumer_group_metadata).result(timeout=10) == "metadata"
            with pytest.raises(ValueError, match="refused"):  # the error reaches the caller
                other.submit(source.commit, offsets=["bad"], asynchronous=False).result(timeout=10)
        done.set_result("drained")
        assert parked.result(timeout=10) == "drained"
    assert consumer.threads[1:] == [consume_thread, consume_thread]
    source.commit(offsets=[], asynchronous=True)  # the callback is over: in place again
    assert consumer.threads[-1] == threading.get_ident()
