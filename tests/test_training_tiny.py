"""End to end on the tiny BERT: train (seconds) -> model directory -> evaluate, and it beats the untrained
model on the held-out fixture offers."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from tests.model_fixtures import FIXTURE_OFFERS, enrich
from training.data import load_offers, split_offers
from training.evaluate import predict, score
from training.model import new_model, torch_runner
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder


def test_model_directory_follows_the_contract(tiny_model_dir: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "labels.json",
        "model_info.json",
        "model.onnx",
        "metrics.json",
        "MODEL_CARD.md",
    ):
        assert (tiny_model_dir / name).is_file(), name
    Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    info = json.loads((tiny_model_dir / "model_info.json").read_text())
    assert set(info) >= {"name", "version", "digest", "max_length", "seq_buckets", "base_model", "created_at"}
    assert info["version"] == tiny_model_dir.name and info["max_length"] <= max(info["seq_buckets"])
    labels = ModelLabels.from_file(tiny_model_dir / "labels.json")
    assert len(labels.categories) == 6 and labels.tags[0] == "O"
    card = (tiny_model_dir / "MODEL_CARD.md").read_text()
    assert "## Data" in card and "## Metrics" in card and "## Limits" in card


def test_trained_tiny_model_beats_the_untrained_one(tiny_model_dir: Path) -> None:
    metrics = json.loads((tiny_model_dir / "metrics.json").read_text())
    config = metrics["config"]
    _, dev = split_offers(load_offers(FIXTURE_OFFERS), config["dev_fraction"], config["split_salt"])
    labels = ModelLabels.from_file(tiny_model_dir / "labels.json")
    encoder = TitleEncoder.from_model_dir(tiny_model_dir)
    base_dir = tiny_model_dir.parents[1] / ".runs" / "tiny" / tiny_model_dir.name / "tiny-base"
    untrained = score(
        dev, predict([o.text for o in dev], torch_runner(new_model(base_dir, labels)), encoder, labels)
    )
    trained = metrics["dev"]["micro"]["f1"]
    assert trained > 0.6, metrics["history"]
    assert trained > untrained["micro"]["f1"] + 0.4
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]


def test_evaluate_cli_prints_json_metrics_and_writes_charts(tiny_model_dir: Path, tmp_path: Path) -> None:
    metrics = json.loads(
        enrich("evaluate", str(tiny_model_dir), str(FIXTURE_OFFERS), "--json", "--charts", str(tmp_path))
    )
    assert metrics["backend"] == "onnxruntime" and metrics["offers"] == 300
    assert 0.6 < metrics["micro"]["f1"] <= 1.0 and "Coffee" in metrics["category_report"]
    assert {p.name for p in tmp_path.glob("*.png")} == {"attribute_f1.png", "category_f1.png"}


def test_augment_cli_writes_valid_offers(tmp_path: Path) -> None:
    out = tmp_path / "aug.jsonl"
    enrich("augment", str(FIXTURE_OFFERS), str(out), "--copies", "1")
    assert len(load_offers(out)) == 300


def test_evaluate_counts_gold_it_cannot_get_as_misses_and_goes_on(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = [
        {  # gold in another casing than the title
            "input": "Nescafé Dark Roast Instant Coffee, 12 oz",
            "category": "Coffee",
            "target_scores": {"Brand": {"NESCAFÉ": 1}, "Net content": {"12 oz": 1}, "Flavor": {"n/a": 1}},
        },
        {  # two gold values for one attribute, one of an attribute the model never saw
            "input": "Nescafé Dark Roast Instant Coffee from Brazil, 12 oz",
            "category": "Coffee",
            "target_scores": {"Roast type": {"Dark Roast": 1, "Dark": 1}, "Origin": {"Brazil": 1}},
        },
        {  # a category the model never saw
            "input": "Kellogg's Corn Flakes Breakfast Cereal, 18 oz",
            "category": "Cereal",
            "target_scores": {"Brand": {"Kellogg's": 1}, "Net content": {"18 oz": 1}},
        },
    ]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    metrics = json.loads(enrich("evaluate", str(tiny_model_dir), str(data), "--json"))
    assert metrics["offers"] == 3
    assert metrics["data_issues"] == {
        "gold_values": 7,
        "values_not_in_title": 1,
        "attributes_with_several_values": 1,
        "values_of_unseen_attributes": 1,
        "unseen_attributes": ["Origin"],
        "offers_of_unseen_categories": 1,
        "unseen_categories": ["Cereal"],
    }
    assert metrics["per_attribute"]["Origin"] == {**metrics["per_attribute"]["Origin"], "tp": 0, "fn": 1}
    assert metrics["per_attribute"]["Roast type"]["fn"] >= 1  # at most one of the two values is predicted
    assert metrics["category_report"]["Cereal"]["recall"] == 0.0
    assert metrics["literature"]["micro"]["vn"] + metrics["literature"]["micro"]["vw"] >= 1  # Origin


def test_train_takes_review_corrections_as_extra_data_for_the_training_split_only(tmp_path: Path) -> None:
    """`enrich review export` lines (with their `review` context) feed `enrich train --extra-data`; a
    correction whose title is in the dev split stays out of training, and both counts are printed."""
    from workers.review_export import correction_line

    dev_title = split_offers(load_offers(FIXTURE_OFFERS), 0.2, "oa-mine-dev-v1")[1][0].text
    titles = ["Acme Midnight Roast Whole Bean Coffee, 2 lb", "Acme Decaf Ground Coffee, 12 oz", dev_title]
    corrections = tmp_path / "corrections.jsonl"
    with corrections.open("wb") as handle:
        for number, title in enumerate(titles):
            event = {
                "listing_id": f"R-{number}", "listing_version": 1, "model": {"name": "tiny", "version": "v1"},
                "category": {"label": "Coffee", "confidence": 0.4},
                "attributes": [{"name": "Brand", "value": title.split()[0], "confidence": 0.3}],
                "review": {"title": title, "reasons": []},
            }  # fmt: skip
            handle.write(json.dumps(correction_line(event)).encode() + b"\n")
    stdout = enrich(
        "train", "--data-path", str(FIXTURE_OFFERS), "--base-model", "tiny", "--epochs", "1",
        "--dev-fraction", "0.2", "--learning-rate", "3e-3", "--head-learning-rate", "3e-3", "--no-progress",
        "--no-save-checkpoints", "--output-root", str(tmp_path / "models"), "--extra-data", str(corrections),
    )  # fmt: skip
    assert "extra data: 2 of 3 offers from 1 file(s) added to the training split (1 left out" in stdout
    [metrics_path] = (tmp_path / "models").glob("*/*/metrics.json")
    data = json.loads(metrics_path.read_text())["data"]
    assert data["extra"] == {"files": 1, "offers": 3, "added": 2, "held_out_titles": 1}
    assert data["train"] + data["dev"] == data["offers"] + 2  # the two corrections joined training only
