"""`enrich replay` end to end on a real Kafka broker, redis-server and the tiny exported model, plus the
pure parts (position parsing, pacing)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from devtools.harness.listings import invalid_samples, sample_listings
from tests.test_pipeline import finished, make_config, run_until
from workers.cli import main as enrich
from workers.contract.errors import ConfigError
from workers.runtime.assembly import REPLAY_HEADER, build_worker
from workers.runtime.replay import BoundedSource, parse_position

Placed = dict[tuple[int, int], bytes | None]  # (partition, offset) -> key


# ---- pure logic ------------------------------------------------------------------------------------------


def test_positions_are_times_epoch_milliseconds_or_offsets() -> None:
    assert parse_position("2025-01-02T03:04:05Z", "in") == 1_735_787_045_000
    assert parse_position("2025-01-02T03:04:05", "in") == 1_735_787_045_000  # naive: UTC
    assert parse_position("1735787045000", "in") == 1_735_787_045_000
    assert parse_position("in:0:5, 1:7", "in") == {0: 5, 1: 7}
    with pytest.raises(ConfigError, match="names topic 'other'"):
        parse_position("other:0:5", "in")
    with pytest.raises(ConfigError, match="cannot read"):
        parse_position("soon", "in")


def test_pacing_hands_out_at_most_a_tenth_of_a_second_of_listings_and_waits_for_one() -> None:
    now = iter([0.0, 0.5, 0.5, 0.5, 0.75])
    source = BoundedSource(None, "in", {0: (0, 10)}, rate=100, clock=lambda: next(now))  # type: ignore[arg-type]

    async def scenario() -> list[int]:
        taken = []
        for used in (7, 3, 0):
            tokens = await source._tokens()
            taken.append(tokens)
            source._budget -= used or tokens
        return taken

    assert asyncio.run(scenario()) == [10, 3, 10]  # capped at 0.1 s worth; empty: waited for the clock


# ---- end to end --------------------------------------------------------------------------------------------


def produce_placed(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]], *, partitions: int = 1,
    timestamp_ms: int = 0,
) -> Placed:  # fmt: skip
    """Record i to partition i % `partitions` (CreateTime `timestamp_ms` when given); where each landed."""
    placed: Placed = {}
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})

    def landed(err: Any, msg: Any) -> None:
        assert err is None, err
        placed[(msg.partition(), msg.offset())] = msg.key()

    for i, (key, value) in enumerate(records):
        producer.produce(
            topic, value, key, partition=i % partitions, timestamp=timestamp_ms, on_delivery=landed
        )
    assert producer.flush(30) == 0
    return placed


def read_output(bootstrap: str, topic: str, expected: int) -> list[tuple[dict[str, Any], str | None]]:
    """Every event of the (one-partition) output topic in order, with its enrich-replay header."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{time.time_ns()}"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[tuple[dict[str, Any], str | None]] = []
    deadline = time.monotonic() + 15
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    headers = dict(msg.headers() or [])
                    marker = headers.get(REPLAY_HEADER)
                    out.append((orjson.loads(msg.value()), marker.decode() if marker else None))
    finally:
        consumer.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


@pytest.fixture
def replay_cli(
    kafka: Any, redis_server: Any, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, dict[str, int], str, str]]]:
    """Run `enrich replay` in-process: (exit code, final counts, replay group, stderr)."""

    def run(
        topics: tuple[str, str, str], model_dir: Path, *args: str
    ) -> tuple[int, dict[str, int], str, str]:
        code = enrich([
            "replay", *args, "--kafka-bootstrap", kafka.bootstrap_servers, "--group-id", "g-live",
            "--input-topic", topics[0], "--output-topic", topics[1], "--dlq-topic", topics[2],
            "--model-dir", str(model_dir), "--redis-url", redis_server.url, "--max-wait-ms", "10",
            "--commit-interval-ms", "100",
        ])  # fmt: skip
        out, err = capsys.readouterr()
        match = re.fullmatch(r"replay (\S+) done: (.*)\n", out)
        assert match, (out, err)
        counts = {k: int(v) for k, v in (p.rsplit(" ", 1) for p in match.group(2).split(", "))}
        return code, counts, match.group(1), err

    yield run


@pytest.mark.services
def test_replay_re_enriches_exactly_the_offset_range_under_its_own_group(
    kafka: Any, redis_server: Any, tiny_model_dir: Path, new_topic: Callable[..., str], replay_cli: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topics = (new_topic(partitions=2, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    records = sample_listings(30, id_prefix="R")
    records[8] = invalid_samples()[0]  # partition 0, offset 4: dead-lettered by both
    placed = produce_placed(bootstrap, topics[0], records, partitions=2)
    config = make_config(bootstrap, tiny_model_dir, topics, "g-live", ENRICH_REDIS_URL=redis_server.url)
    live = build_worker(config)
    asyncio.run(run_until([live], lambda: finished(live) >= 30))
    live_offsets = committed(bootstrap, "g-live", topics[0], 2)
    assert live_offsets == {0: 15, 1: 15}

    code, counts, group, err = replay_cli(
        topics, tiny_model_dir, "--from", f"{topics[0]}:0:3,1:5", "--to", "0:10,1:8"
    )
    assert code == 0
    assert counts == {
        "read": 10,
        "enriched": 9,
        "cache hits": 9,
        "dead-lettered": 1,
        "superseded by guard": 0,
    }
    assert "\r[" in err and "10/10" in err  # the progress bar
    events = read_output(bootstrap, topics[1], expected=29 + 9)
    replayed = sorted(e["listing_id"] for e, marker in events if marker == group)
    in_range = [(0, o) for o in range(3, 10) if o != 4] + [(1, o) for o in range(5, 8)]
    assert replayed == sorted(placed[at].decode() for at in in_range)  # type: ignore[union-attr]
    assert len(events) == 29 + 9 and sum(marker is None for _, marker in events) == 29
    assert committed(bootstrap, "g-live", topics[0], 2) == live_offsets  # the live group untouched
    assert committed(bootstrap, group, topics[0], 2) == {0: 10, 1: 8}
    assert group.startswith("g-live.replay.")


@pytest.mark.services
def test_replay_from_and_to_timestamps(
    kafka: Any, tiny_model_dir: Path, new_topic: Callable[..., str], replay_cli: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topics = (new_topic(prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    base = int(time.time() * 1000) - 3_600_000
    for minute, prefix in enumerate("ABC"):  # three batches, a minute apart
        produce_placed(
            bootstrap, topics[0], sample_listings(6, id_prefix=prefix), timestamp_ms=base + minute * 60_000
        )
    start = datetime.fromtimestamp((base + 60_000) / 1000, UTC).isoformat()
    code, counts, group, _ = replay_cli(
        topics, tiny_model_dir, "--from", start, "--to", str(base + 120_000), "--rate", "500"
    )
    assert code == 0 and counts["read"] == 6 and counts["enriched"] == 6
    events = read_output(bootstrap, topics[1], expected=6)
    assert sorted(e["listing_id"] for e, _ in events) == [f"B-{i:06d}" for i in range(6)]
    assert {marker for _, marker in events} == {group}


def newer_copy(model_dir: Path, into: Path) -> Path:
    """The same graph exported as another model: version v2, created a day later (a higher rank)."""
    copy = shutil.copytree(model_dir, into / "tiny" / "v2")
    info = json.loads((copy / "model_info.json").read_text())
    created = datetime.fromisoformat(info["created_at"]).timestamp() + 86_400
    info.update(version="v2", created_at=datetime.fromtimestamp(created, UTC).isoformat())
    (copy / "model_info.json").write_text(json.dumps(info))
    return copy


@pytest.mark.services
def test_a_newer_model_replaces_results_of_the_same_version_and_an_older_version_never_overtakes(
    kafka: Any, redis_server: Any, tiny_model_dir: Path, new_topic: Callable[..., str], replay_cli: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    bootstrap = kafka.bootstrap_servers
    topics = (new_topic(prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    config = make_config(bootstrap, tiny_model_dir, topics, "g-live", ENRICH_REDIS_URL=redis_server.url)
    # M0 v1, M1 v1, then M0 v2: two passes, so the live output holds all three in this order.
    for records in (sample_listings(2, id_prefix="M"), sample_listings(1, id_prefix="M", version=2)):
        produce_placed(bootstrap, topics[0], records)
        live = build_worker(config)
        asyncio.run(run_until([live], lambda: finished(live) >= len(records)))  # noqa: B023
    newer = newer_copy(tiny_model_dir, tmp_path)

    code, counts, _, _ = replay_cli(topics, newer, "--from", "0:0")
    assert code == 0 and (counts["read"], counts["enriched"], counts["superseded by guard"]) == (3, 2, 1)
    _, again, _, _ = replay_cli(topics, newer, "--from", "0:0")  # the same command: resumes, nothing left
    assert again["read"] == 0
    _, older, _, _ = replay_cli(topics, tiny_model_dir, "--from", "0:0", "--fresh")
    assert (older["read"], older["enriched"], older["superseded by guard"]) == (3, 0, 3)

    seen: dict[str, list[tuple[int, str]]] = {}
    for event, _ in read_output(bootstrap, topics[1], expected=5):
        seen.setdefault(event["listing_id"], []).append((event["listing_version"], event["model"]["version"]))
    assert seen == {"M-000000": [(1, "v1"), (2, "v1"), (2, "v2")], "M-000001": [(1, "v1"), (1, "v2")]}
