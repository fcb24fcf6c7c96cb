"""`enrich cv`: folds stratified by category, duplicates together; 2 folds of the tiny model end to end."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import FIXTURE_OFFERS
from training.cv import assign_folds
from training.data import Offer, load_offers
from training.decode_cv import MODEL_ALONE, SERVED
from workers.model.decode import ModelLabels, decode_attributes, decode_category


def test_folds_are_stratified_deterministic_and_keep_identical_titles_together() -> None:
    offers = load_offers(FIXTURE_OFFERS)
    offers = [*offers, offers[0], offers[1]]  # duplicates must not straddle folds
    folds = assign_folds(offers, 5, seed=0)
    assert folds == assign_folds(offers, 5, seed=0)
    assert folds != assign_folds(offers, 5, seed=1)
    assert folds[-2:] == folds[:2]
    by_text: dict[str, set[int]] = {}
    for offer, fold in zip(offers, folds, strict=True):
        by_text.setdefault(offer.text, set()).add(fold)
    assert all(len(f) == 1 for f in by_text.values())
    sizes = Counter(folds)
    assert set(sizes) == set(range(5)) and max(sizes.values()) - min(sizes.values()) <= 3
    for category in {o.category for o in offers}:
        per_fold = Counter(f for o, f in zip(offers, folds, strict=True) if o.category == category)
        assert max(per_fold.values()) - min(per_fold.values()) <= 2, (category, per_fold)


def test_small_categories_spread_over_folds_instead_of_all_starting_in_fold_zero() -> None:
    offers = [Offer(f"title {i}", f"category {i}", ()) for i in range(6)]
    assert sorted(assign_folds(offers, 3)) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(offers, 1)


def test_cv_cli_trains_one_model_per_fold_and_reports_both_metrics(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    result = subprocess.run(
        [
            sys.executable, "-m", "workers.cli", "cv", "--data-path", str(FIXTURE_OFFERS),
            "--base-model", "tiny", "--folds", "2", "--max-epochs", "4", "--learning-rate", "3e-3",
            "--head-learning-rate", "3e-3", "--no-progress", "--no-save-checkpoints", "--out", str(out),
        ],
        capture_output=True, text=True, check=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    summary = json.loads((out / "cv.json").read_text())
    assert summary["folds"] == 2 and summary["config"]["epochs"] == 4 and summary["offers"] == 300
    per_fold = summary["per_fold"]
    assert sum(m["test_offers"] for m in per_fold) == 300  # every offer scored once
    assert all(m["offers"] == m["test_offers"] and m["train_offers"] < 150 for m in per_fold)
    f1 = [m["micro"]["f1"] for m in per_fold]
    assert summary["strict_micro_f1"]["mean"] == pytest.approx(statistics.fmean(f1))
    assert summary["strict_micro_f1"]["sd"] == pytest.approx(statistics.stdev(f1))
    literature = [m["literature"]["micro"]["f1"] for m in per_fold]
    assert summary["literature_micro_f1"]["values"] == literature
    assert min(f1) > 0.5  # a trained model, not noise (the untrained tiny model scores near 0)
    assert {"Brand", "Net content"} <= set(summary["per_attribute"])
    assert summary["per_attribute"]["Brand"]["gold"] == 300
    markdown = (out / "cv.md").read_text()
    assert markdown in result.stdout
    for row, key in (
        ("micro-F1, strict (ours)", "strict_micro_f1"),
        ("micro-F1, literature (ExtractGPT rules)", "literature_micro_f1"),
        ("category macro-F1", "category_macro_f1"),
    ):
        assert f"| {row} | {summary[key]['mean']:.4f} ± {summary[key]['sd']:.4f} |" in markdown
    assert "| Brand | " in markdown
    assert not list(out.glob(".fold-*"))  # per-fold scratch (the tiny base) is removed
    held_out = [
        json.loads(line) for k in range(2) for line in (out / f"fold-{k}.predictions.jsonl").open()
    ]  # every offer's out-of-fold prediction, for tuning decoding without retraining
    assert sorted(p["title"] for p in held_out) == sorted(
        json.loads(line)["input"] for line in FIXTURE_OFFERS.open()
    )
    some = next(p for p in held_out if p["attributes"])
    assert {"category", "category_confidence"} <= set(some)
    assert {"name", "value", "confidence", "start", "end"} == set(some["attributes"][0])
    first = some["attributes"][0]
    assert some["title"][first["start"] : first["end"]] == first["value"]
    # the raw outputs decode again to exactly the saved predictions
    raw = np.load(out / "fold-0.outputs.npz")
    labels = ModelLabels.from_dict(json.loads(str(raw["labels"])))
    decoded = [json.loads(line) for line in (out / "fold-0.predictions.jsonl").open()]
    ends = np.cumsum(raw["lengths"])
    assert len(decoded) == len(ends) == raw["category_probs"].shape[0] and ends[-1] == len(raw["offsets"])
    for index, (saved, end) in enumerate(zip(decoded, ends, strict=True)):
        start = end - raw["lengths"][index]
        category, _ = decode_category(raw["category_probs"][index], labels)
        attributes = decode_attributes(
            saved["title"], [tuple(o) for o in raw["offsets"][start:end]], raw["tag_probs"][start:end],
            labels, labels.attributes_by_category.get(category),
        )  # fmt: skip
        assert category == saved["category"]
        assert [(a.name, a.value, a.start) for a in attributes] == [
            (a["name"], a["value"], a["start"]) for a in saved["attributes"]
        ]
    # decoding levers scored on those outputs (the command checks its plain decode gives the CV's figures)
    decoded_cv = subprocess.run(
        [sys.executable, "-m", "workers.cli", "cv-decode", str(out)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    report = json.loads((out / "cv-decode.json").read_text())
    plain = report[MODEL_ALONE]["strict_micro_f1"]
    assert plain["values"] == pytest.approx(f1) and plain["gain"]["mean"] == 0
    assert {MODEL_ALONE, SERVED} < set(report)
    assert report[SERVED]["strict_micro_f1"]["mean"] > plain["mean"]  # the fixture's closed vocabulary
    assert (out / "cv-decode.md").read_text() in decoded_cv.stdout


def test_a_rerun_keeps_the_finished_folds_of_the_same_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pure logic: the training of a fold is replaced by canned metrics; only the bookkeeping is tested."""
    import training.cv as cv
    from training.config import TrainConfig

    trained: list[int] = []
    issues = (
        "values_not_in_title", "attributes_with_several_values", "values_of_unseen_attributes",
        "offers_of_unseen_categories",
    )  # fmt: skip

    def fake_fold(config, train, test, run_dir, teacher_config=None):
        trained.append(len(trained))
        f1 = 0.5 + len(trained) / 100
        micro = {"f1": f1, "precision": f1, "recall": f1}
        return {
            "micro": micro, "literature": {"micro": micro, "macro": micro},
            "category_accuracy": 1.0, "category_macro_f1": 1.0, "train_seconds": 1.0,
            "per_attribute": {"Brand": {"tp": 1, "fn": 0, "f1": f1}}, "data_issues": dict.fromkeys(issues, 0),
        }  # fmt: skip

    monkeypatch.setattr(cv, "_fold_metrics", fake_fold)
    config = TrainConfig(data_path=str(FIXTURE_OFFERS), progress=False)
    out = tmp_path / "cv"
    first = json.loads((cv.run_cv(config, 3, out) / "cv.json").read_text())
    assert len(trained) == 3 and first["folds_kept_from_earlier_runs"] == []
    (out / "fold-1.json").unlink()
    (out / "fold-2.json").write_text("{not json")  # a fold cut off while it was written
    second = json.loads((cv.run_cv(config.replace(num_threads=1), 3, out) / "cv.json").read_text())
    assert len(trained) == 5 and second["folds_kept_from_earlier_runs"] == [0]
    assert second["per_fold"][0] == first["per_fold"][0]
    assert "folds 1 kept from earlier runs" in (out / "cv.md").read_text()
    cv.run_cv(config.replace(learning_rate=3e-4), 3, out)  # another configuration: nothing kept
    assert len(trained) == 8
    assert cv.run_cv(config, 3, out, fold_seed=1) and len(trained) == 11
