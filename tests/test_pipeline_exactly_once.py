"""Exactly-once mode: a worker killed mid-transaction leaves no duplicate for a read_committed consumer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records

pytestmark = pytest.mark.services

REPO_ROOT = Path(__file__).resolve().parents[1]


class Reader:
    """Accumulates the listing ids of a topic as one isolation level shows them."""

    def __init__(self, bootstrap: str, topic: str, *, committed: bool) -> None:
        self.ids: list[str] = []
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"reader-{time.time_ns()}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
        })  # fmt: skip
        self._consumer.subscribe([topic])

    def read_until(self, count: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while len(self.ids) < count and time.monotonic() < deadline:
            self.read_for(0.2)
        return len(self.ids)

    def read_for(self, seconds: float) -> None:
        for msg in self._consumer.consume(500, seconds):
            if msg.error() is None:
                self.ids.append(orjson.loads(msg.value())["listing_id"])

    def close(self) -> None:
        self._consumer.close()


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
        )


def test_exactly_once_shows_no_duplicates_after_a_crash(
    kafka, tiny_model_dir: Path, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    source, output, dlq = (
        new_topic(partitions=2, prefix="in"),
        new_topic(prefix="out"),
        new_topic(prefix="dlq"),
    )
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1",
        "ENRICH_KAFKA_BOOTSTRAP": bootstrap, "ENRICH_MODEL_DIR": str(tiny_model_dir),
        "ENRICH_GROUP_ID": "g-eos",
        "ENRICH_INPUT_TOPIC": source, "ENRICH_OUTPUT_TOPIC": output, "ENRICH_DLQ_TOPIC": dlq,
        "ENRICH_EXACTLY_ONCE": "true", "ENRICH_WORKER_ID": "eos-worker", "ENRICH_METRICS_PORT": "-1",
        # Long transactions, so the crash below lands inside one; short sessions, so the group moves on.
        "ENRICH_COMMIT_INTERVAL_MS": "4000", "ENRICH_SESSION_TIMEOUT_MS": "3000",
        "ENRICH_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    log_path = tmp_path / "worker.log"
    committed = Reader(bootstrap, output, committed=True)
    uncommitted = Reader(bootstrap, output, committed=False)
    worker = start_worker(env, log_path)
    try:
        produce_records(bootstrap, source, sample_listings(30, id_prefix="E", seed=1))
        assert committed.read_until(30, 60) == 30, log_path.read_text()

        produce_records(bootstrap, source, sample_listings(30, id_prefix="F", seed=2))
        assert uncommitted.read_until(31, 30) >= 31, log_path.read_text()
        worker.send_signal(signal.SIGKILL)  # mid-transaction: its outputs are visible uncommitted only
        worker.wait(timeout=10)

        worker = start_worker(env, log_path)  # same transactional.id: fences and aborts the old one
        assert committed.read_until(60, 60) == 60, log_path.read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()
        committed.read_for(1.0)
        uncommitted.read_until(10**6, 2.0)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        committed.close()
        uncommitted.close()

    expected = Counter([f"E-{i:06d}" for i in range(30)] + [f"F-{i:06d}" for i in range(30)])
    assert Counter(committed.ids) == expected
    # The aborted transaction's outputs exist (so the crash did hit mid-transaction) but stay invisible.
    assert len(uncommitted.ids) > 60
