"""Distillation: the first-character alignment of two tokenizations, the label mapping, the loss, and a tiny
teacher distilled into a tiny student with another tokenizer end to end (train -> export -> predict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.model_fixtures import FIXTURE_OFFERS, enrich
from training.distil import (
    SoftTargets,
    align_to_student,
    begin_to_inside,
    distillation_objective,
    label_map,
    to_student_space,
)
from workers.model.encode import TitleEncoder

TAGS = ("O", "B-Brand", "I-Brand", "B-Size", "I-Size", "B-Color", "I-Color")
TITLE = "Samsung 16oz Black"


def dist(**mass: float) -> np.ndarray:
    row = np.zeros(len(TAGS), dtype=np.float32)
    for name, value in mass.items():
        row[TAGS.index(name.replace("_", "-"))] = value
    return row


# The teacher splits "16oz" into a number and a unit and keeps "Samsung" and "Black" whole; the student
# (another WordPiece vocabulary) does the opposite. [CLS]/[SEP] have the empty span.
TEACHER_OFFSETS = [(0, 0), (0, 7), (8, 10), (10, 12), (13, 18), (0, 0)]
TEACHER_TAGS = np.stack(
    [
        dist(O=1.0),
        dist(B_Brand=0.9, O=0.1),  # "samsung"
        dist(B_Size=0.8, O=0.2),  # "16"
        dist(I_Size=0.7, B_Size=0.1, O=0.2),  # "oz"
        dist(B_Color=0.6, I_Color=0.3, O=0.1),  # "black"
        dist(O=1.0),
    ]
)
STUDENT_OFFSETS = [(0, 0), (0, 3), (3, 7), (8, 12), (13, 15), (15, 18), (0, 0)]


def test_each_student_token_gets_the_teacher_token_of_its_first_character() -> None:
    assert [TITLE[s:e] for s, e in STUDENT_OFFSETS[1:-1]] == ["Sam", "sung", "16oz", "Bl", "ack"]
    targets, mask = align_to_student(TEACHER_OFFSETS, TEACHER_TAGS, STUDENT_OFFSETS, begin_to_inside(TAGS))
    assert mask.tolist() == [False, True, True, True, True, True, False]
    np.testing.assert_allclose(targets[1], dist(B_Brand=0.9, O=0.1))  # starts where "samsung" starts
    np.testing.assert_allclose(targets[2], dist(I_Brand=0.9, O=0.1))  # inside "samsung": B moves to I
    np.testing.assert_allclose(targets[3], dist(B_Size=0.8, O=0.2))  # "16oz" takes "16", the first char's
    np.testing.assert_allclose(targets[4], dist(B_Color=0.6, I_Color=0.3, O=0.1))
    np.testing.assert_allclose(targets[5], dist(I_Color=0.9, O=0.1))
    assert not targets[0].any() and not targets[-1].any()


def test_the_same_tokenization_passes_through_and_a_truncated_teacher_leaves_tokens_to_the_gold() -> None:
    same, mask = align_to_student(TEACHER_OFFSETS, TEACHER_TAGS, TEACHER_OFFSETS, begin_to_inside(TAGS))
    np.testing.assert_allclose(same[1:-1], TEACHER_TAGS[1:-1])
    assert mask.tolist() == [False, True, True, True, True, False]
    truncated = [*TEACHER_OFFSETS[:3], (0, 0)]  # the teacher's max_length cut "oz" and "black"
    targets, mask = align_to_student(truncated, TEACHER_TAGS[:4], STUDENT_OFFSETS, begin_to_inside(TAGS))
    assert mask.tolist() == [False, True, True, True, False, False, False]
    assert not targets[4:].any()


def test_labels_map_by_name_and_lost_mass_is_renormalised() -> None:
    teacher = ("O", "B-Brand", "I-Brand", "B-Origin", "I-Origin")  # the student never saw Origin
    student = ("O", "B-Brand", "I-Brand", "B-Size", "I-Size")
    mapping = label_map(teacher, student)
    probs = np.array([[0.2, 0.3, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]], dtype=np.float32)
    moved = to_student_space(probs, mapping)
    np.testing.assert_allclose(moved[0], [0.4, 0.6, 0.0, 0.0, 0.0])
    assert not moved[1].any()  # all mass on an unknown tag: no target (masked by soft_targets)
    categories = to_student_space(
        np.array([0.5, 0.25, 0.25]), label_map(("Tea", "Coffee", "Shoes"), ("Coffee", "Tea"))
    )
    np.testing.assert_allclose(categories, [1 / 3, 2 / 3])


def _batch_and_logits() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, list[SoftTargets]]:
    generator = torch.Generator().manual_seed(0)
    tag_logits = torch.randn((2, 4, len(TAGS)), generator=generator)
    category_logits = torch.randn((2, 3), generator=generator)
    batch = {
        "tags": torch.tensor([[-100, 1, 2, -100], [-100, 0, -100, -100]]),
        "categories": torch.tensor([0, 2]),
    }
    targets = [
        SoftTargets(
            (tag_logits[row, :length] / 2).softmax(-1).numpy(),
            np.array([False] + [True] * (length - 2) + [False]),
            (category_logits[row] / 2).softmax(-1).numpy(),
        )
        for row, length in ((0, 4), (1, 3))  # the second title is one token shorter (padding)
    ]
    return batch, tag_logits, category_logits, targets


def test_loss_is_the_gold_loss_when_the_student_already_matches_the_teacher() -> None:
    batch, tag_logits, category_logits, targets = _batch_and_logits()

    def gold(indices, batch, tags, categories):  # type: ignore[no-untyped-def]
        return torch.tensor(3.0)

    matched = distillation_objective(gold, targets, 0.25, 2.0, 0.5)
    assert matched([0, 1], batch, tag_logits, category_logits).item() == pytest.approx(0.75, abs=1e-5)
    shuffled = distillation_objective(gold, targets[::-1], 0.25, 2.0, 0.5)  # wrong targets cost more
    assert shuffled([1, 0], batch, tag_logits, category_logits).item() == pytest.approx(0.75, abs=1e-5)
    assert shuffled([0, 1], batch, tag_logits.flip(-1), category_logits).item() > 0.8
    with pytest.raises(ValueError, match="alpha"):
        distillation_objective(gold, targets, 1.5, 2.0, 0.5)


def test_a_tiny_student_learns_from_the_teacher_alone_across_tokenizers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """alpha = 0: no gold label reaches the student, so its dev F1 comes through the aligned soft targets
    only. The student's WordPiece vocabulary (300) differs from the teacher's (600)."""
    enrich(
        "train", "--data-path", str(FIXTURE_OFFERS), "--output-root", str(tmp_path), "--name", "student",
        "--version", "v1", "--base-model", "tiny", "--tiny-vocab-size", "300", "--epochs", "6",
        "--patience", "3", "--learning-rate", "3e-3", "--head-learning-rate", "3e-3",
        "--no-save-checkpoints", "--no-progress", "--distil-from", str(tiny_model_dir), "--distil-alpha", "0",
    )  # fmt: skip
    student = tmp_path / "student" / "v1"
    teacher_metrics = json.loads((tiny_model_dir / "metrics.json").read_text())
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["config"]["distil_from"] == str(tiny_model_dir) and metrics["config"]["distil_alpha"] == 0
    titles = [json.loads(line)["input"] for line in FIXTURE_OFFERS.read_text().splitlines()]
    teacher_offsets = [e.offsets for e in TitleEncoder.from_model_dir(tiny_model_dir).encode(titles)]
    student_offsets = [e.offsets for e in TitleEncoder.from_model_dir(student).encode(titles)]
    assert sum(a != b for a, b in zip(teacher_offsets, student_offsets, strict=True)) > 100
    assert metrics["dev"]["micro"]["f1"] > 0.5, (metrics["history"], teacher_metrics["dev"]["micro"]["f1"])
    assert metrics["dev"]["category_accuracy"] > 0.8

    enrich("export", str(student), "--no-triton")
    out = tmp_path / "predicted.jsonl"
    enrich("predict", str(student), str(FIXTURE_OFFERS), str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 300 and sum(bool(row["attributes"]) for row in rows) > 250


def test_cv_trains_a_teacher_per_fold_and_reports_it_next_to_the_student(tmp_path: Path) -> None:
    teacher_config = tmp_path / "teacher.json"
    teacher_config.write_text(
        json.dumps(
            {"base_model": "tiny", "tiny_hidden_size": 96, "learning_rate": 3e-3, "head_learning_rate": 3e-3}
        )
    )
    out = tmp_path / "cv"
    printed = enrich(
        "cv", "--data-path", str(FIXTURE_OFFERS), "--base-model", "tiny", "--tiny-vocab-size", "300",
        "--folds", "2", "--max-epochs", "4", "--learning-rate", "3e-3", "--head-learning-rate", "3e-3",
        "--no-progress", "--no-save-checkpoints", "--teacher-config", str(teacher_config), "--out", str(out),
    )  # fmt: skip
    summary = json.loads((out / "cv.json").read_text())
    assert summary["teacher_config"]["tiny_hidden_size"] == 96 and summary["teacher_config"]["epochs"] == 4
    assert all(m["teacher"]["offers"] == m["test_offers"] for m in summary["per_fold"])
    assert 0.3 < summary["teacher_strict_micro_f1"]["mean"] <= 1.0
    assert 0.3 < summary["strict_micro_f1"]["mean"] <= 1.0
    assert "teacher (trained per fold): micro-F1, strict" in printed and "trained per fold" in printed


def test_a_teacher_that_may_have_seen_the_students_dev_offers_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The split is a hash of the title: a student with a larger dev fraction (or another salt or file)
    holds out offers its teacher trained on, whose labels the soft targets would carry into training."""
    from training.config import TrainConfig
    from training.distil import check_teacher_split

    taught = json.loads((tiny_model_dir / "metrics.json").read_text())["config"]
    same = TrainConfig(data_path=taught["data_path"], dev_fraction=taught["dev_fraction"],
                       split_salt=taught["split_salt"])  # fmt: skip
    check_teacher_split(tiny_model_dir, same)
    for other in ({"dev_fraction": taught["dev_fraction"] + 0.05}, {"split_salt": "another"}):
        with pytest.raises(ValueError, match="trained on another split"):
            check_teacher_split(tiny_model_dir, same.replace(**other))
