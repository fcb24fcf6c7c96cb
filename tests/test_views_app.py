"""`enrich views` against the real broker: latest record per listing on the compacted topic, counts per
category in the counts table's changelog. The worker runs as a subprocess, as in production."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import ConfigResource

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.services.kafka import KafkaCluster
from tests.test_pipeline import counter, make_config, run_until
from views.app import category_counts_changelog
from workers.runtime.assembly import build_worker
from workers.runtime.producer import producer_settings

pytestmark = pytest.mark.services

_WAIT_S = 60.0
_REPO = Path(__file__).resolve().parents[1]


def _event(listing_id: str, version: int, category: str) -> bytes:
    return orjson.dumps({
        "schema_version": 1, "listing_id": listing_id, "listing_version": version,
        "model": {"name": "m", "version": "1"}, "category": {"label": category, "confidence": 0.9},
        "attributes": [], "cache_hit": False, "processed_at": "2026-11-29T08:00:00Z", "latency_ms": 1.0})


# (key, value) in topic order: b2 arrives after b3 (older version after newer), c moves Tea -> Coffee.
_INPUT: list[tuple[bytes, bytes]] = [
    (b"a", _event("a", 1, "Coffee")),
    (b"b", _event("b", 3, "Tea")),
    (b"b", _event("b", 2, "Coffee")),
    (b"c", _event("c", 1, "Tea")),
    (b"bad", b"{not json"),
    (b"c", _event("c", 2, "Coffee")),
    (b"d", _event("d", 7, "Tea")),
]
_EXPECTED_LATEST = {b"a": _event("a", 1, "Coffee"), b"b": _event("b", 3, "Tea"),
                    b"c": _event("c", 2, "Coffee"), b"d": _event("d", 7, "Tea")}
_EXPECTED_COUNTS = {"Coffee": 2, "Tea": 2}


def _produce(kafka: KafkaCluster, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(_WAIT_S) == 0, "records still undelivered"


def _last_per_key(kafka: KafkaCluster, topic: str, until: Callable[[dict[bytes, bytes]], bool]
                  ) -> dict[bytes, bytes]:
    """Read `topic` from the start, keeping the last value per key, until `until` holds or time runs out.
    The topic may not exist yet (the worker creates it), so unknown-topic errors are waited through."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"g-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "topic.metadata.refresh.interval.ms": 500})
    consumer.subscribe([topic])
    latest: dict[bytes, bytes] = {}
    deadline = time.monotonic() + _WAIT_S
    try:
        while not until(latest) and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.5):
                if message.error() is None and message.key() is not None:
                    latest[message.key()] = message.value()
    finally:
        consumer.close()
    return latest


@contextmanager
def _views_worker(kafka: KafkaCluster, app_id: str, input_topic: str, latest_topic: str, run_dir: Path,
                  log_path: Path) -> Iterator[None]:
    """A running `enrich views` subprocess, stopped by SIGTERM (killed if it does not stop in 30 s)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "views", "--kafka-bootstrap", kafka.bootstrap_servers,
             "--app-id", app_id, "--input-topic", input_topic, "--latest-topic", latest_topic,
             "--data-dir", str(run_dir / "data"), "--log-level", "WARNING"],  # partitions: from the topic
            cwd=_REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _counts(kafka: KafkaCluster, app_id: str, expected: dict[str, int]) -> dict[str, int]:
    encoded = {orjson.dumps(k): orjson.dumps(v) for k, v in expected.items()}
    changelog = _last_per_key(kafka, category_counts_changelog(app_id), lambda seen: seen == encoded)
    return {orjson.loads(k): orjson.loads(v) for k, v in changelog.items()}


def test_views_keep_latest_per_listing_and_count_categories(
        kafka: KafkaCluster, new_topic: Callable[..., str], tmp_path: Path) -> None:
    input_topic = new_topic(partitions=2, prefix="views-in")
    app_id = f"views-{uuid.uuid4().hex[:8]}"
    latest_topic = f"{app_id}-latest"
    log_path = tmp_path / "worker.log"
    _produce(kafka, input_topic, _INPUT)

    with _views_worker(kafka, app_id, input_topic, latest_topic, tmp_path, log_path):
        latest = _last_per_key(kafka, latest_topic, lambda seen: seen == _EXPECTED_LATEST)
        assert latest == _EXPECTED_LATEST, log_path.read_text()[-3000:]
        assert _counts(kafka, app_id, _EXPECTED_COUNTS) == _EXPECTED_COUNTS, log_path.read_text()[-3000:]

    resource = ConfigResource(ConfigResource.Type.TOPIC, latest_topic)
    admin = kafka.admin()  # keep a reference: a collected client fails its pending futures
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"
    assert "skipping bad attribute event" in log_path.read_text()

    # A restarted worker recovers its tables from their changelogs: an older version still loses.
    _produce(kafka, input_topic, [(b"b", _event("b", 1, "Coffee")), (b"e", _event("e", 1, "Tea"))])
    expected_latest = {**_EXPECTED_LATEST, b"e": _event("e", 1, "Tea")}
    with _views_worker(kafka, app_id, input_topic, latest_topic, tmp_path, log_path):
        latest = _last_per_key(kafka, latest_topic, lambda seen: seen == expected_latest)
        assert latest == expected_latest, log_path.read_text()[-3000:]
        expected_counts = {"Coffee": 2, "Tea": 3}
        assert _counts(kafka, app_id, expected_counts) == expected_counts, log_path.read_text()[-3000:]
    assert "Error in recovery" not in log_path.read_text()


def test_views_read_what_a_real_worker_writes(
        kafka: KafkaCluster, new_topic: Callable[..., str], tiny_model_dir: Path, tmp_path: Path) -> None:
    """The used-by path as one flow: listings in, a real worker's attribute events (lz4-compressed, with
    its headers and keys) out, the recommender views on them. Hand-made uncompressed input hid that the
    views could not decompress what the worker writes."""
    topics = (new_topic(partitions=2, prefix="flow-in"), new_topic(partitions=2, prefix="flow-attrs"),
              new_topic(prefix="flow-dlq"))
    listings = sample_listings(30, id_prefix="F")
    produce_records(kafka.bootstrap_servers, topics[0], listings, timeout_s=_WAIT_S)
    config = make_config(kafka.bootstrap_servers, tiny_model_dir, topics, f"flow-{uuid.uuid4().hex[:8]}")
    assert producer_settings(config.kafka, "w")["compression.type"] != "none"  # the case that broke
    worker = build_worker(config)
    asyncio.run(run_until([worker], lambda: counter(worker, "enrich_events_out") >= len(listings)))

    written = _last_per_key(kafka, topics[1], lambda seen: len(seen) == len(listings))
    assert len(written) == len(listings)
    categories: dict[str, int] = {}
    for value in written.values():
        label = orjson.loads(value)["category"]["label"]
        categories[label] = categories.get(label, 0) + 1

    app_id = f"views-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "views.log"
    with _views_worker(kafka, app_id, topics[1], f"{app_id}-latest", tmp_path, log_path):
        latest = _last_per_key(kafka, f"{app_id}-latest", lambda seen: seen == written)
        assert latest == written, log_path.read_text()[-3000:]
        assert _counts(kafka, app_id, categories) == categories, log_path.read_text()[-3000:]
    assert "UnsupportedCodecError" not in log_path.read_text()

