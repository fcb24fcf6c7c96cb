"""Low-confidence review, the pure parts: the rule, the thresholds file, the settings, the ack join of
emit's hook, the OA-Mine line of a flagged event, and extra training data (training split only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from training.data import Offer, add_extra_offers, load_offers, split_offers
from workers.contract.errors import ConfigError
from workers.contract.results import ListingResult
from workers.model.decode import Attribute
from workers.review_export import correction_line
from workers.runtime.config import load_config
from workers.stages.review import (
    ReviewTap,
    load_thresholds,
    parse_thresholds,
    review_reasons,
    unknown_names,
)

FILE = {
    "default": {"category": 0.6, "attributes": {"*": 0.5, "Brand": 0.7}},
    "categories": {
        "Coffee": {"category": 0.8, "attributes": {"Brand": 0.9}},
        "Tea": {"attributes": 0.2},
    },
}


def thresholds(data: Any = FILE, category_min: float = 0.5, attribute_min: float = 0.5) -> Any:
    return parse_thresholds(data, category_min=category_min, attribute_min=attribute_min)


def reasons(label: str, confidence: float, *attributes: tuple[str, float], data: Any = FILE) -> list[tuple]:
    found = review_reasons(
        thresholds(data),
        {"label": label, "confidence": confidence},
        [{"name": name, "value": "v", "confidence": c} for name, c in attributes],
    )
    return [(r["kind"], r["name"], r["confidence"], r["threshold"]) for r in found]


@pytest.mark.parametrize(
    ("result", "data", "expected"),
    [
        pytest.param(("Shoes", 0.59, ("Brand", 0.69), ("Color", 0.49)), FILE, [
            ("category", "Shoes", 0.59, 0.6), ("attribute", "Brand", 0.69, 0.7),
            ("attribute", "Color", 0.49, 0.5),
        ], id="below-the-defaults"),
        pytest.param(("Shoes", 0.6, ("Brand", 0.7), ("Color", 0.5)), FILE, [], id="equal-passes"),
        pytest.param(("Coffee", 0.79, ("Brand", 0.89), ("Roast", 0.49)), FILE, [
            ("category", "Coffee", 0.79, 0.8), ("attribute", "Brand", 0.89, 0.9),
            ("attribute", "Roast", 0.49, 0.5),
        ], id="category-own-thresholds-others-keep-the-default-star"),
        pytest.param(("Tea", 0.61, ("Brand", 0.3), ("Color", 0.19)), FILE, [
            ("attribute", "Color", 0.19, 0.2),
        ], id="one-number-for-a-category-replaces-the-default-names-too"),
        pytest.param(("Tea", 0.4, ("Brand", 0.45)), None, [
            ("category", "Tea", 0.4, 0.5), ("attribute", "Brand", 0.45, 0.5),
        ], id="no-file-the-two-minimums"),
    ],
)  # fmt: skip
def test_the_most_specific_threshold_decides_and_below_it_is_a_reason(
    result: tuple, data: Any, expected: list[tuple]
) -> None:
    assert reasons(*result, data=data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"defaults": {}}, r"unknown keys \['defaults'\]"),
        ({"default": {"category": 1.5}}, r"default\.category: expected a number from 0 to 1"),
        ({"default": {"category": True}}, "expected a number"),
        ({"categories": {"Tea": {"attributes": {"Brand": "high"}}}}, r"categories\.Tea\.attributes\.Brand"),
        ({"categories": {"Tea": {"atributes": 0.2}}}, r"categories\.Tea: unknown keys"),
        ({"categories": []}, "categories: expected an object"),
        ([], "expected an object"),
    ],
)
def test_a_bad_thresholds_file_is_a_config_error_naming_the_place(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        thresholds(data)


def test_minimums_out_of_range_and_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ENRICH_REVIEW_CATEGORY_MIN"):
        thresholds(None, category_min=-0.1)
    with pytest.raises(ConfigError, match="cannot read it"):
        load_thresholds(tmp_path / "missing.json", category_min=0.5, attribute_min=0.5)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_thresholds(tmp_path / "bad.json", category_min=0.5, attribute_min=0.5)
    (tmp_path / "good.json").write_text(json.dumps(FILE))
    loaded = load_thresholds(tmp_path / "good.json", category_min=0.5, attribute_min=0.5)
    assert loaded == thresholds()


def test_names_the_model_does_not_know_are_reported() -> None:
    assert unknown_names(thresholds(), ["Coffee", "Shoes"], ["Brand", "Color"]) == ["category 'Tea'"]
    assert unknown_names(thresholds(), ["Coffee", "Tea"], ["Color"]) == ["attribute 'Brand'"]


def test_review_settings_come_from_env_and_flags(tmp_path: Path) -> None:
    import argparse

    from workers.runtime.config import add_config_arguments

    off = load_config(None, env={})
    assert off.review.topic == "" and off.review.thresholds_file is None
    env = {"ENRICH_REVIEW_TOPIC": "listings.review", "ENRICH_REVIEW_CATEGORY_MIN": "0.7",
           "ENRICH_REVIEW_THRESHOLDS_FILE": str(tmp_path / "t.json")}  # fmt: skip
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    config = load_config(parser.parse_args(["--review-attribute-min", "0.4"]), env=env)
    assert (config.review.topic, config.review.category_min, config.review.attribute_min) == (
        "listings.review", 0.7, 0.4,
    )  # fmt: skip
    assert config.review.thresholds_file == tmp_path / "t.json"


class _Producer:
    """Records what the hook produces (its ack is called by the test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[bytes, bytes]], Callable[[], None]]] = []
        self.headers: list[Any] = []

    async def produce_batch(
        self, topic: str, records: list, on_delivered: Callable[[], None], headers: Any = None, **_: Any
    ) -> None:
        self.calls.append((topic, records, on_delivered))
        self.headers.append(headers)


def _result(category_confidence: float, brand_confidence: float) -> ListingResult:
    return ListingResult.from_decoded(
        "Coffee", category_confidence, [Attribute("Brand", "Acme", brand_confidence, 0, 4)]
    )


def test_offsets_finish_only_after_the_events_and_their_copies_are_both_acknowledged() -> None:
    counter = Counter("enrich_review", "", ["kind"], registry=CollectorRegistry())
    producer = _Producer()
    tap = ReviewTap(topic="review", thresholds=thresholds(), producer=producer, counter=counter)  # type: ignore[arg-type]
    batch = tap.batch(lambda: True)
    assert batch.flag("Acme coffee", _result(0.95, 0.95)) is None
    flagged = batch.flag("Acme coffee beans", _result(0.5, 0.5))
    assert flagged is not None
    assert orjson.loads(flagged) == {"title": "Acme coffee beans", "reasons": [
        {"kind": "category", "name": "Coffee", "confidence": 0.5, "threshold": 0.8},
        {"kind": "attribute", "name": "Brand", "confidence": 0.5, "threshold": 0.9},
    ]}  # fmt: skip
    batch.copy(b"L-1", b"event")
    finished: list[bool] = []
    on_events = batch.after_both(lambda: finished.append(True))
    asyncio.run(batch.produce([("enrich-replay", b"g.replay.1")]))
    [(topic, records, on_copies)] = producer.calls
    assert (topic, records) == ("review", [(b"L-1", b"event")])
    assert producer.headers == [[("enrich-replay", b"g.replay.1")]]  # a replay's copies say so too
    on_events()
    assert finished == []  # the copies are not acknowledged yet: the offsets must not finish
    on_copies()
    assert finished == [True]
    assert {s.labels["kind"]: s.value for s in counter.collect()[0].samples if s.name.endswith("_total")} == {
        "category": 1.0, "attribute": 1.0,
    }  # fmt: skip


def test_a_batch_without_flagged_results_produces_no_copies_and_keeps_the_callback() -> None:
    counter = Counter("enrich_review", "", ["kind"], registry=CollectorRegistry())
    producer = _Producer()
    tap = ReviewTap(topic="review", thresholds=thresholds(), producer=producer, counter=counter)  # type: ignore[arg-type]
    batch = tap.batch(lambda: True)
    done = lambda: None  # noqa: E731
    assert batch.after_both(done) is done
    asyncio.run(batch.produce())
    assert producer.calls == []


def test_a_flagged_event_becomes_an_oa_mine_line_that_training_loads(tmp_path: Path) -> None:
    title = "Acme Dark Roast Coffee 12 oz"
    event = {
        "listing_id": "L-1", "listing_version": 2, "model": {"name": "m", "version": "v1"},
        "category": {"label": "Coffee", "confidence": 0.4},
        "attributes": [{"name": "Brand", "value": "Acme", "confidence": 0.3, "start": 0, "end": 4}],
        "review": {"title": title, "reasons": [{"kind": "category", "name": "Coffee", "confidence": 0.4,
                                                "threshold": 0.5}]},
    }  # fmt: skip
    line = correction_line(event)
    assert line is not None and line["target_scores"] == {"Brand": {"Acme": 1}}
    assert correction_line({**event, "review": None}) is None
    path = tmp_path / "corrections.jsonl"
    path.write_bytes(orjson.dumps(line) + b"\n")
    assert load_offers(path) == [Offer(title, "Coffee", (("Brand", "Acme"),))]


def test_extra_offers_join_the_training_split_only_and_held_out_titles_stay_out(tmp_path: Path) -> None:
    offers = [Offer(f"title {i}", "Coffee", (("Brand", "title"),)) for i in range(40)]
    train, dev = split_offers(offers, 0.25, "salt")
    extra = [Offer("a new title", "Coffee", ()), Offer(dev[0].text, "Coffee", ())]
    path = tmp_path / "extra.jsonl"
    path.write_text("".join(json.dumps({"input": o.text, "category": o.category}) + "\n" for o in extra))
    combined, report = add_extra_offers(train, dev, [path])
    assert combined == [*train, extra[0]]
    assert report == {"files": 1, "offers": 2, "added": 1, "held_out_titles": 1}
    assert add_extra_offers(train, dev, []) == (
        train,
        {"files": 0, "offers": 0, "added": 0, "held_out_titles": 0},
    )
