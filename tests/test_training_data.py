"""Loading OA-Mine lines, the deterministic split, value spans and BIO labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.fixtures import DEFAULT_FIXTURE_PATH
from training.data import (
    DataError,
    Offer,
    build_labels,
    find_value_spans,
    load_offers,
    split_offers,
    write_offers,
)


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_absent_values_are_dropped_and_files_round_trip(tmp_path: Path) -> None:
    row = {
        "input": "Crocs Women's Clog",
        "category": "Shoes",
        "target_scores": {"Brand": {"Crocs": 1}, "Color": {"n/a": 1}, "Gender": {"Women's": 1}},
    }
    offers = load_offers(write_lines(tmp_path / "a.jsonl", [row]))
    assert offers == [Offer("Crocs Women's Clog", "Shoes", (("Brand", "Crocs"), ("Gender", "Women's")))]
    write_offers(tmp_path / "b.jsonl", offers)
    assert load_offers(tmp_path / "b.jsonl") == offers


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"category": "Shoes"}), "string 'input'"),
        (json.dumps({"input": "Crocs", "target_scores": {}}), "'category'"),
        (
            json.dumps({"input": "Crocs", "category": "Shoes", "target_scores": {"Brand": {"Nike": 1}}}),
            "not a substring",
        ),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = {"input": "Crocs", "category": "Shoes", "target_scores": {}}
    path = write_lines(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{message}"):
        load_offers(path)


def test_split_is_deterministic_disjoint_and_keeps_duplicates_together() -> None:
    offers = load_offers(DEFAULT_FIXTURE_PATH)
    train, dev = split_offers(offers, 0.2, "salt")
    reversed_train, reversed_dev = split_offers(offers[::-1], 0.2, "salt")
    assert set(reversed_train) == set(train) and set(reversed_dev) == set(dev)  # order does not matter
    assert len(train) + len(dev) == len(offers) and 0.1 < len(dev) / len(offers) < 0.3
    assert not {o.text for o in train} & {o.text for o in dev}
    assert split_offers(offers, 0.2, "other salt")[1] != dev


def test_spans_prefer_whole_words_longest_first_and_label_repeats() -> None:
    text = "Ellie Shoes Men's 105-saddle, Black/White, 10 (Men's)"
    spans = find_value_spans(text, [("Size", "10"), ("Model name", "105-saddle"), ("Gender", "Men's")])
    assert [(s.attribute, text[s.start : s.end]) for s in spans] == [
        ("Gender", "Men's"),
        ("Model name", "105-saddle"),
        ("Size", "10"),
        ("Gender", "Men's"),
    ]
    nested = find_value_spans(
        "Great River Organic Milling, Oats",
        [("Brand", "Great River Organic Milling"), ("Specialty", "Organic")],
    )
    assert [s.attribute for s in nested] == ["Brand"]  # BIO cannot nest; the longer value wins


def test_labels_cover_every_attribute_per_category() -> None:
    labels = build_labels(load_offers(DEFAULT_FIXTURE_PATH))
    assert labels.tags[0] == "O" and len(labels.tags) % 2 == 1
    assert set(labels.categories) == {"Coffee", "Shoes", "Sunscreen", "Tea", "Toothbrush", "Vitamin"}
    assert "Roast type" in labels.attributes_by_category["Coffee"]
    assert "Roast type" not in labels.attributes_by_category["Tea"]
