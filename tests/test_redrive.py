"""`enrich dlq redrive` end to end on a real broker: a validator bug dead-letters good listings, the fix
ships, redrive re-publishes them (from the dead letter's payload, or from the input topic when the payload
was cut) and the worker enriches them; a dry run changes nothing, a rerun redrives nothing twice, and a
record that keeps failing stops at the attempt cap."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from tests.test_pipeline import finished, make_config, run_until
from workers.cli import main
from workers.contract.errors import ReasonCode, ValidationFailed
from workers.contract.events import Listing
from workers.redrive import RedriveOptions, parse_since, redrive
from workers.runtime import assembly
from workers.runtime.assembly import build_worker
from workers.stages.validate import ListingValidator

pytestmark = pytest.mark.services

BROKEN = {f"R-{i:06d}" for i in range(4)}  # the listings the buggy validator rejects


class BuggyValidator(ListingValidator):
    """The validator before the fix: it rejects four good listings as schema violations."""

    def validate(self, value: bytes | None, key: bytes | None) -> Listing:
        listing = super().validate(value, key)
        if listing.listing_id in BROKEN:
            raise ValidationFailed(ReasonCode.SCHEMA_VIOLATION, "the validator bug that the fix removes")
        return listing


def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets-probe"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions]
        return sum(ends)
    finally:
        consumer.close()


def work(config: object, count: int) -> None:
    worker = build_worker(config)  # type: ignore[arg-type]
    asyncio.run(run_until([worker], lambda: finished(worker) >= count))
    assert finished(worker) == count


def test_redrive_after_a_fix_enriches_the_dead_letters_once_and_caps_attempts(
    kafka, tiny_model_dir: Path, new_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bootstrap = kafka.bootstrap_servers
    topics = (new_topic(partitions=2, prefix="in"), new_topic(prefix="out"),
              new_topic(partitions=2, prefix="dlq"))  # fmt: skip
    big = orjson.dumps({"listing_id": "big", "title": "x" * 300_000})  # cut in its dead letter (> 256 KiB)
    records = [*sample_listings(12, id_prefix="R"), (b"J-1", b'{"no'), (b"big", big)]
    produce_records(bootstrap, topics[0], records)
    config = make_config(bootstrap, tiny_model_dir, topics, "g-redrive")
    with monkeypatch.context() as patch:
        patch.setattr(assembly, "ListingValidator", BuggyValidator)
        work(config, 14)
    assert len(read_events(bootstrap, topics[1], expected=8, timeout_s=15)) == 8
    assert len(read_events(bootstrap, topics[2], expected=6, timeout_s=15)) == 6

    def run(reason: str, **extra: object) -> dict[str, object]:
        return redrive(RedriveOptions(bootstrap, topics[2], reason=reason, **extra)).as_dict()  # type: ignore[arg-type]

    # Dry run: the counts, and nothing produced or committed.
    input_end = end_offsets(bootstrap, topics[0])
    argv = ["dlq", "redrive", "--kafka-bootstrap", bootstrap, "--topic", topics[2],
            "--reason", "schema_violation"]  # fmt: skip
    assert main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("dry run, nothing changed: ")
    counts = orjson.loads(printed.split(": ", 1)[1])
    assert (counts["read"], counts["redriven"], counts["skipped"]) == (6, 4, {"other_reason": 2})
    assert end_offsets(bootstrap, topics[0]) == input_end

    # After the fix: redrive, and a rerun finds nothing new to redrive.
    assert main(argv) == 0
    assert orjson.loads(capsys.readouterr().out)["redriven"] == 4
    assert end_offsets(bootstrap, topics[0]) == input_end + 4
    assert run("schema_violation")["read"] == 0
    since_tomorrow = run("payload_too_large", since=datetime.now(UTC) + timedelta(days=1), dry_run=True)
    assert since_tomorrow["skipped"] == {"before_since": 1, "other_reason": 5}
    too_large = run("payload_too_large", max_attempts=1)
    assert (too_large["redriven"], too_large["from_source"], too_large["from_payload"]) == (1, 1, 0)

    work(config, 5)  # the fixed validator: 4 events, and the big record fails again
    events = read_events(bootstrap, topics[1], expected=12, timeout_s=15)
    assert sorted(e["listing_id"] for e in events) == sorted(f"R-{i:06d}" for i in range(12))
    dead = read_events(bootstrap, topics[2], expected=7, timeout_s=15)
    again = [d for d in dead if d.get("redrive_attempt")]
    assert len(again) == 1 and again[0]["error"]["code"] == ReasonCode.PAYLOAD_TOO_LARGE
    assert again[0]["redrive_attempt"] == 1 and again[0]["payload_size_bytes"] == len(big)  # the whole

    capped = run("payload_too_large", max_attempts=1)
    assert (capped["read"], capped["redriven"], capped["skipped_attempts"]) == (1, 0, 1)
    assert end_offsets(bootstrap, topics[0]) == input_end + 5


def test_since_takes_a_time_or_an_age() -> None:
    now = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2026-11-29T06:00:00Z") == datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
