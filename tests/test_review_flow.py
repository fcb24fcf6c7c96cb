"""Low-confidence review end to end on a real broker, redis-server and the tiny model: flagged events,
their copies on the review topic, offsets committed after both acks, and `enrich review export`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import fastjsonschema
import orjson
import pytest

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from tests.test_pipeline import counter, make_config, run_until
from training.data import load_offers
from workers.contract.events import load_schema
from workers.model.decode import ModelLabels
from workers.runtime.assembly import build_worker
from workers.stages.review import load_thresholds, review_reasons

pytestmark = pytest.mark.services


def thresholds_file(path: Path, labels: ModelLabels) -> Path:
    """Nothing is reviewed by default; listings predicted as the first category are reviewed for it (any
    confidence under 1), those of the second for any attribute: so some listings are flagged, some not,
    and both kinds of reason occur."""
    first, second = labels.categories[:2]
    path.write_text(json.dumps({
        "default": {"category": 0.0, "attributes": 0.0},
        "categories": {first: {"category": 1.0}, second: {"attributes": {"*": 1.0}}},
    }))  # fmt: skip
    return path


@pytest.mark.parametrize("exactly_once", ["false", "true"])
def test_low_confidence_events_are_flagged_copied_to_the_review_topic_and_exported(
    kafka, redis_server, tiny_model_dir: Path, new_topic: Callable[..., str], tmp_path: Path,
    exactly_once: str,
) -> None:  # fmt: skip
    bootstrap = kafka.bootstrap_servers
    topics = new_topic(partitions=3, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq")
    review_topic = new_topic(partitions=2, prefix="review")
    labels = ModelLabels.from_file(tiny_model_dir / "labels.json")
    path = thresholds_file(tmp_path / "thresholds.json", labels)
    listings = sample_listings(60, id_prefix="R")
    produce_records(bootstrap, topics[0], listings)
    config = make_config(
        bootstrap, tiny_model_dir, topics, f"g-review-{exactly_once}", ENRICH_REDIS_URL=redis_server.url,
        ENRICH_REVIEW_TOPIC=review_topic, ENRICH_REVIEW_THRESHOLDS_FILE=str(path),
        ENRICH_EXACTLY_ONCE=exactly_once,
    )  # fmt: skip

    first = build_worker(config)
    asyncio.run(run_until([first], lambda: counter(first, "enrich_events_out") >= 60))
    events = read_events(bootstrap, topics[1], expected=60, timeout_s=15)
    assert len(events) == 60

    # Flagged exactly where the rule says so, with its reasons and the title; the others carry no review.
    rule = load_thresholds(path, category_min=0.5, attribute_min=0.5)
    titles = {key.decode(): orjson.loads(value)["title"] for key, value in listings}
    output_schema = fastjsonschema.compile(load_schema("listing-attributes"))
    flagged: dict[str, dict] = {}
    kinds: Counter[str] = Counter()
    for event in events:
        output_schema({k: v for k, v in event.items() if k != "_partition"})
        expected = review_reasons(rule, event["category"], event["attributes"])
        if not expected:
            assert "review" not in event
            continue
        assert event["review"] == {"title": titles[event["listing_id"]], "reasons": expected}
        flagged[event["listing_id"]] = event
        kinds.update({reason["kind"] for reason in expected})
    assert 0 < len(flagged) < 60 and set(kinds) == {"category", "attribute"}, kinds

    # The review topic holds the same events, keyed by listing id (nothing else: the export's count below).
    copies = read_events(bootstrap, review_topic, expected=len(flagged), timeout_s=15, raw=True)
    assert sorted(c["key"].decode() for c in copies) == sorted(flagged)
    for copy in copies:
        event = orjson.loads(copy["value"])
        assert event == {k: v for k, v in flagged[copy["key"].decode()].items() if k != "_partition"}
    assert {kind: counter_of(first, kind) for kind in kinds} == dict(kinds)

    # Offsets were committed after both acks: a restarted worker reads only what is new.
    again = sample_listings(5, id_prefix="R", version=2)
    produce_records(bootstrap, topics[0], again)
    second = build_worker(config)
    asyncio.run(run_until([second], lambda: counter(second, "enrich_events_out") >= 5))
    assert counter(second, "enrich_events_in") == 5
    newer = {key.decode() for key, _ in again} & set(flagged)  # cache hits: flagged again

    # Export: one OA-Mine line per reviewed listing (its newest version), loadable by training.
    out = tmp_path / "corrections.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "workers.cli", "review", "export", "--kafka-bootstrap", bootstrap,
         "--topic", review_topic, "--out", str(out)],
        capture_output=True, text=True, check=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    report = json.loads(result.stdout.split(" -> ")[0])
    assert report == {"read": len(flagged) + len(newer), "exported": len(flagged), "superseded": len(newer),
                      "skipped": {}}  # fmt: skip
    offers = load_offers(out)
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sorted(line["review"]["listing_id"] for line in lines) == sorted(flagged)
    for offer, line in zip(offers, lines, strict=True):
        listing_id = line["review"]["listing_id"]
        event = flagged[listing_id]
        assert offer.text == titles[listing_id] and offer.category == event["category"]["label"]
        assert sorted(offer.values) == sorted((a["name"], a["value"]) for a in event["attributes"])
        assert line["review"]["listing_version"] == (2 if listing_id in newer else 1)


def counter_of(worker, kind: str) -> float:
    return sum(
        s.value
        for m in worker.metrics.registry.collect()
        for s in m.samples
        if s.name == "enrich_review_total" and s.labels.get("kind") == kind
    )
