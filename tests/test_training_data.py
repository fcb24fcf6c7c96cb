"""Loading OA-Mine lines, the deterministic split, value spans and BIO labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.fixtures import DEFAULT_FIXTURE_PATH
from training.data import (
    DataError,
    Offer,
    alignment_report,
    build_labels,
    find_value_spans,
    load_offers,
    split_offers,
    write_offers,
)


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_absent_values_are_kept_apart_and_files_round_trip(tmp_path: Path) -> None:
    row = {
        "input": "Crocs Women's Clog",
        "category": "Shoes",
        "target_scores": {"Brand": {"Crocs": 1}, "Color": {"n/a": 1}, "Gender": {"Women's": 1}},
    }
    offers = load_offers(write_lines(tmp_path / "a.jsonl", [row]))
    assert offers == [
        Offer("Crocs Women's Clog", "Shoes", (("Brand", "Crocs"), ("Gender", "Women's")), absent=("Color",))
    ]
    write_offers(tmp_path / "b.jsonl", offers)
    assert load_offers(tmp_path / "b.jsonl") == offers


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"category": "Shoes"}), "string 'input'"),
        (json.dumps({"input": "Crocs", "target_scores": {}}), "'category'"),
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


def test_any_labelled_file_loads_and_training_skips_and_counts_what_it_cannot_place(tmp_path: Path) -> None:
    rows = [
        {  # a value that is not in the title, another only in another casing
            "input": "lavazza Dark Roast Coffee",
            "category": "Coffee",
            "target_scores": {
                "Brand": {"Lavazza": 1},
                "Roast type": {"Dark Roast": 1},
                "Origin": {"Brazil": 1},
            },
        },
        {  # two values for one attribute; one value under a longer one
            "input": "Mango Lime Green Tea",
            "category": "Tea",
            "target_scores": {"Flavor": {"Mango": 1, "Lime": 1}, "Tea variety": {"Green Tea": 1, "Tea": 1}},
        },
    ]
    offers = load_offers(write_lines(tmp_path / "any.jsonl", rows))
    assert offers[0].values == (("Brand", "Lavazza"), ("Roast type", "Dark Roast"), ("Origin", "Brazil"))
    spans = find_value_spans(offers[0].text, offers[0].values)
    assert [(s.attribute, offers[0].text[s.start : s.end]) for s in spans] == [
        ("Brand", "lavazza"),  # placed case-insensitively
        ("Roast type", "Dark Roast"),
    ]
    assert alignment_report(offers) == {
        "values": 7,
        "placed": 5,
        "case_insensitive": 1,
        "not_in_title": 1,  # Brazil
        "overlapping": 1,  # Tea inside Green Tea
        "skipped": 2,
        "several_values": 2,
    }
