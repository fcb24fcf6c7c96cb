"""MODEL_CARD.md for a model directory: data, metrics, how it was trained, and its limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config import TrainConfig

__all__ = ["write_model_card"]

LIMITS = """\
- Extracts only values that appear verbatim in the title, one value per attribute, and only the attributes
  seen in training for the predicted category (51 attributes / 10 categories for OA-Mine).
- BIO tagging cannot represent overlapping values (e.g. Brand "Great River Organic Milling" and Specialty
  "Organic"): during training the longer value wins and the other is not labelled.
- Values that start or end inside a word piece boundary the tokenizer does not split are unreachable.
- English Amazon-style titles only; trained on ~1.2k offers, so rare attributes (few examples) are weak.
- Confidence is the mean tag probability of the span, not a calibrated probability.
"""


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    rows = [
        "| run | dev micro-P | dev micro-R | dev micro-F1 | category acc. | epochs | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = [("as trained" + (" (with augmentation)" if metrics.get("augmented") else ""), metrics)]
    if "without_augmentation" in metrics:
        runs.append(("same run, without augmentation", metrics["without_augmentation"]))
    for label, run in runs:
        micro = run["dev"]["micro"]
        rows.append(
            f"| {label} | {micro['precision']:.3f} | {micro['recall']:.3f} | {micro['f1']:.3f} | "
            f"{run['dev']['category_accuracy']:.3f} | {len(run['history'])} | {run['train_seconds']} |"
        )
    return rows


def _credit(data_path: str) -> str:
    if "oa-mine" in data_path.lower():
        return "OA-Mine: Zhang et al. (WWW 2022); subset: Brinkmann, Shraga, Bizer (ExtractGPT); Apache-2.0."
    return "Synthetic or user-supplied offers in the OA-Mine format."


def write_model_card(model_dir: Path, config: TrainConfig, metrics: dict[str, Any]) -> Path:
    data = metrics["data"]
    per_attribute = metrics["dev"]["per_attribute"]
    attribute_rows = [
        f"| {name} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} | {m['tp'] + m['fn']} |"
        for name, m in per_attribute.items()
    ]
    text = "\n".join(
        [
            f"# {config.name} {model_dir.name}",
            "",
            "Multi-task encoder: BIO token tagging over attribute names + category classification.",
            f"Base model: `{config.base_model}`. Max length {config.max_length} tokens, "
            f"buckets {config.seq_buckets}.",
            "",
            "## Data",
            f"`{data['path']}`: {data['offers']} offers, {data['categories']} categories, "
            f"{data['attributes']} attributes. Deterministic hash split (salt `{config.split_salt}`): "
            f"{data['train']} train / {data['dev']} dev. {_credit(data['path'])}",
            "",
            "## Metrics (dev set)",
            "Micro precision/recall/F1 over (attribute, value) pairs, exact match after whitespace/case "
            f"normalisation; decoding `{config.decode_method}`, restricted to the predicted "
            "category's attributes: "
            f"{config.restrict_to_category}.",
            "",
            *_metric_rows(metrics),
            "",
            "| attribute | P | R | F1 | gold |",
            "|---|---|---|---|---|",
            *attribute_rows,
            "",
            "## Training",
            f"AdamW (encoder lr {config.learning_rate}, heads lr {config.head_learning_rate}, decay "
            f"{config.weight_decay}), warmup {config.warmup_ratio} + linear decay, batch {config.batch_size},"
            f" up to {config.epochs} epochs, early stop after {config.patience} epochs without dev F1 gain, "
            f"seed {config.seed}; augmentation: {config.augment} (copies {config.augment_copies}).",
            "",
            "## Limits",
            LIMITS,
        ]
    )
    path = model_dir / "MODEL_CARD.md"
    path.write_text(text)
    return path
