"""Knowledge distillation: a fine-tuned teacher's tag and category distributions teach the student.

`enrich train --distil-from TEACHER_MODEL_DIR` (any model directory `enrich train` wrote, e.g. one trained
with ``--base-model mpnet``) trains the student exactly as `enrich train` does (same loop, data, augmented
titles, early stopping on dev micro-F1), with one change: the loss of every batch is

    loss = α · CE(gold) + (1 − α) · T² · KL(teacher/T ‖ student/T)

for both heads (tag per token, category per title; the category terms weighted by
``category_loss_weight`` as in plain training). α = ``distil_alpha``, T = ``distil_temperature``; T² keeps
the soft term's gradient scale independent of T (Hinton et al. 2015). Steps:

1. load the teacher (weights, its own tokenizer and labels);
2. run it once over every training title (originals and augmented copies) at temperature T;
3. map its labels onto the student's by name (a tag or category the student lacks loses its mass, the rest
   is renormalised), then give each student token a distribution by the character rule below;
4. fit, with :func:`distillation_objective` in place of the gold loss.

**Aligning two tokenizers** (mpnet and MiniLM happen to share one WordPiece vocabulary, so for them this is
the identity; any other teacher splits "Samsung" or "16oz" its own way): a student token gets the
distribution of the teacher token that covers the student token's *first character*. When that character
is not the teacher token's first, a value cannot begin there (it began earlier, inside the same teacher
token), so the mass the teacher gave to B-X moves to I-X. A student token whose first character no teacher
token covers (the teacher truncated the title) has no soft target and learns from the gold tags only.
Reading it per character rather than per whitespace word keeps a teacher's own split of "16oz" into a
number and a unit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from training.data import Offer
from training.model import AttributeModel, load_model
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder

__all__ = [
    "Batch",
    "Objective",
    "SoftTargets",
    "Teacher",
    "align_to_student",
    "begin_to_inside",
    "distillation_objective",
    "label_map",
    "soft_targets",
]

Batch = dict[str, Tensor]  # train.collate's: input_ids, attention_mask, tags, categories
# (example indices of the batch, the collated batch, tag logits [B,S,T], category logits [B,C]) -> loss
Objective = Callable[[Sequence[int], Batch, Tensor, Tensor], Tensor]

_TEACHER_BATCH = 64


@dataclass(frozen=True)
class Teacher:
    model: AttributeModel
    encoder: TitleEncoder
    labels: ModelLabels

    @classmethod
    def from_dir(cls, model_dir: Path | str) -> Teacher:
        model_dir = Path(model_dir)
        missing = [
            n
            for n in ("labels.json", "model_info.json", "model.safetensors")
            if not (model_dir / n).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"teacher {model_dir} lacks {missing}: give a model directory written by `enrich train`"
            )
        labels = ModelLabels.from_file(model_dir / "labels.json")
        return cls(load_model(model_dir), TitleEncoder.from_model_dir(model_dir), labels)


@dataclass(frozen=True)
class SoftTargets:
    tags: np.ndarray  # float32 [L, student tags], one row per student token
    tag_mask: np.ndarray  # bool [L]: the token has a teacher distribution
    category: np.ndarray  # float32 [student categories]


def label_map(teacher: Sequence[str], student: Sequence[str]) -> np.ndarray:
    """[teacher labels, student labels] 0/1 matrix: 1 where the names are equal (probs @ it moves them)."""
    index = {name: i for i, name in enumerate(student)}
    matrix = np.zeros((len(teacher), len(student)), dtype=np.float32)
    for row, name in enumerate(teacher):
        if name in index:
            matrix[row, index[name]] = 1.0
    return matrix


def to_student_space(probs: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """``probs`` (last axis: teacher labels) on the student's labels, renormalised (empty rows stay 0)."""
    out = (probs @ mapping).astype(np.float32)
    total = out.sum(axis=-1, keepdims=True)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0)


def begin_to_inside(tags: Sequence[str]) -> np.ndarray:
    """For each tag, the tag its mass goes to inside a token: B-X -> I-X, every other tag to itself."""
    index = {tag: i for i, tag in enumerate(tags)}
    return np.array([index.get("I-" + t[2:], i) if t.startswith("B-") else i for i, t in enumerate(tags)])


def align_to_student(
    teacher_offsets: Sequence[tuple[int, int]],
    teacher_tags: np.ndarray,
    student_offsets: Sequence[tuple[int, int]],
    inside: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per student token, the teacher's tag distribution by the first-character rule (module docstring).

    ``teacher_tags``: [teacher tokens, tags] already in the student's tag space; ``inside``: from
    :func:`begin_to_inside`. Returns ([student tokens, tags], bool mask of tokens that got one).
    """
    length = max((end for _, end in [*teacher_offsets, *student_offsets]), default=0)
    owner = np.full(length, -1, dtype=np.int64)
    for position, (start, end) in enumerate(teacher_offsets):
        if end > start:
            owner[start:end] = np.where(owner[start:end] < 0, position, owner[start:end])
    targets = np.zeros((len(student_offsets), teacher_tags.shape[1]), dtype=np.float32)
    mask = np.zeros(len(student_offsets), dtype=bool)
    for position, (start, end) in enumerate(student_offsets):
        if end <= start or owner[start] < 0:
            continue
        teacher_token = int(owner[start])
        probs = teacher_tags[teacher_token]
        if start > teacher_offsets[teacher_token][0]:
            moved = np.zeros_like(probs)
            np.add.at(moved, inside, probs)
            probs = moved
        targets[position], mask[position] = probs, True
    return targets, mask


def _teacher_probs(teacher: Teacher, texts: Sequence[str], temperature: float) -> tuple[list, np.ndarray]:
    """Teacher tokens' offsets and tag probabilities at T (per title), and category probabilities at T."""
    encoded = teacher.encoder.encode(texts)
    tag_probs, category_probs = [], []
    teacher.model.eval()
    with torch.inference_mode():
        for first in range(0, len(encoded), _TEACHER_BATCH):
            items = encoded[first : first + _TEACHER_BATCH]
            input_ids, attention_mask = teacher.encoder.pad_to_bucket(items)
            tag_logits, category_logits = teacher.model(
                torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
            )
            tags = (tag_logits / temperature).softmax(-1).numpy()
            tag_probs += [tags[row, : item.length] for row, item in enumerate(items)]
            category_probs.append((category_logits / temperature).softmax(-1).numpy())
    offsets_and_tags = [(item.offsets, probs) for item, probs in zip(encoded, tag_probs, strict=True)]
    return offsets_and_tags, np.concatenate(category_probs)


def soft_targets(
    teacher: Teacher, offers: Sequence[Offer], encoder: TitleEncoder, labels: ModelLabels, temperature: float
) -> list[SoftTargets]:
    """The teacher's distributions for each offer, on the student's tokens and labels (one teacher pass)."""
    texts = [offer.text for offer in offers]
    per_title, categories = _teacher_probs(teacher, texts, temperature)
    tag_map = label_map(teacher.labels.tags, labels.tags)
    category_map = label_map(teacher.labels.categories, labels.categories)
    inside = begin_to_inside(labels.tags)
    students = encoder.encode(texts)
    categories = to_student_space(categories, category_map)
    targets = []
    for (offsets, probs), student, category in zip(per_title, students, categories, strict=True):
        tags = to_student_space(probs, tag_map)
        tag_targets, mask = align_to_student(offsets, tags, student.offsets, inside)
        mask &= tag_targets.sum(axis=1) > 0  # all the teacher's mass on tags the student lacks
        targets.append(SoftTargets(tag_targets, mask, category))
    return targets


def _kl(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of KL(targets ‖ softmax(student / T)); rows are tokens or titles."""
    log_student = functional.log_softmax(student_logits / temperature, dim=-1)
    return functional.kl_div(log_student, targets, reduction="sum") / max(1, targets.shape[0])


def distillation_objective(
    gold: Objective, targets: Sequence[SoftTargets], alpha: float, temperature: float, category_weight: float
) -> Objective:
    """α · gold + (1 − α) · T² · (KL on tags + category_weight · KL on categories); ``targets[i]`` belongs to
    training example ``i``."""
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(
            f"distillation needs 0 <= alpha <= 1 and temperature > 0, got {alpha}, {temperature}"
        )

    def loss(indices: Sequence[int], batch: Batch, tag_logits: Tensor, category_logits: Tensor) -> Tensor:
        width, num_tags = tag_logits.shape[1], tag_logits.shape[2]
        tag_targets = torch.zeros((len(indices), width, num_tags))
        mask = torch.zeros((len(indices), width), dtype=torch.bool)
        for row, index in enumerate(indices):
            length = len(targets[index].tag_mask)
            tag_targets[row, :length] = torch.from_numpy(targets[index].tags)
            mask[row, :length] = torch.from_numpy(targets[index].tag_mask)
        category_targets = torch.from_numpy(np.stack([targets[i].category for i in indices]))
        soft = _kl(tag_logits[mask], tag_targets[mask], temperature)
        soft = soft + category_weight * _kl(category_logits, category_targets, temperature)
        return alpha * gold(indices, batch, tag_logits, category_logits) + (1 - alpha) * temperature**2 * soft

    return loss


def check_teacher_split(teacher_dir: Path, config: Any) -> None:
    """ValueError unless the teacher never trained on the student's dev offers: its soft targets would
    carry their labels into training and inflate the student's dev F1 (early stopping included). The
    split is a hash of the title (`split_offers`), so with the same file and salt a teacher whose dev
    fraction is at least the student's held out every dev offer of the student."""
    metrics_path = teacher_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ValueError(f"teacher {teacher_dir} has no metrics.json: cannot tell which offers it trained on")
    taught = json.loads(metrics_path.read_text())["config"]
    same_file = Path(taught["data_path"]).resolve() == Path(config.data_path).resolve()
    if not (same_file and taught["split_salt"] == config.split_salt
            and taught["dev_fraction"] >= config.dev_fraction):  # fmt: skip
        raise ValueError(
            f"teacher {teacher_dir} was trained on another split (data {taught['data_path']}, salt "
            f"{taught['split_salt']!r}, dev fraction {taught['dev_fraction']}) than this student's (data "
            f"{config.data_path}, salt {config.split_salt!r}, dev fraction {config.dev_fraction}): it may "
            "have seen the student's dev offers; train the teacher on the same split"
        )
