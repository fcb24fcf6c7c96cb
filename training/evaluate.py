"""Scoring a model: predictions, the two metrics (``training.metrics``), per-attribute table, charts.

Predictions go through the serving code (``workers.model.encode`` + ``workers.model.decode``); only the
function that turns padded ids into probabilities differs (torch during training, ONNX Runtime for
``enrich evaluate``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import data_issues, normalise_value, score
from workers.model.decode import Attribute, ModelLabels, decode_listing
from workers.model.encode import TitleEncoder

__all__ = [
    "Prediction",
    "RunBatch",
    "format_data_issues",
    "normalise_value",
    "onnx_runner",
    "predict",
    "score",
    "write_charts",
]

RunBatch = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Prediction:
    category: str
    category_confidence: float
    attributes: list[Attribute] = field(default_factory=list)


def predict(
    texts: Sequence[str],
    run_batch: RunBatch,
    encoder: TitleEncoder,
    labels: ModelLabels,
    *,
    batch_size: int = 64,
    decode_method: str = "viterbi",
    restrict_to_category: bool = True,
    snap_to_words: bool = True,
    known_values: bool = True,
) -> list[Prediction]:
    """Encode, run, decode: exactly the worker's steps (``known_values=False``: the model alone, without
    the lexicon of `workers.model.lexicon`)."""
    predictions: list[Prediction] = []
    for first in range(0, len(texts), batch_size):
        chunk = list(texts[first : first + batch_size])
        encoded = encoder.encode(chunk)
        tag_probs, category_probs = run_batch(*encoder.pad_to_bucket(encoded))
        for row, (text, item) in enumerate(zip(chunk, encoded, strict=True)):
            decoded = decode_listing(
                text,
                item.offsets,
                tag_probs[row],
                category_probs[row],
                labels,
                method=decode_method,
                restrict_to_category=restrict_to_category,
                snap_to_words=snap_to_words,
                lexicon=labels.lexicon if known_values else None,
            )
            predictions.append(Prediction(*decoded))
    return predictions


def onnx_runner(onnx_path: Path | str, threads: int = 2) -> RunBatch:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tag_probs, category_probs = session.run(
            ["tag_probs", "category_probs"], {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        return tag_probs, category_probs

    return run


def format_table(metrics: dict[str, Any]) -> str:
    """Per-attribute strict P/R/F1, then the micro rows of both metrics side by side."""
    lines = [f"{'attribute':<24}{'P':>7}{'R':>7}{'F1':>7}{'gold':>7}"]
    for name, m in metrics["per_attribute"].items():
        lines.append(f"{name:<24}{m['precision']:7.3f}{m['recall']:7.3f}{m['f1']:7.3f}{m['tp'] + m['fn']:7d}")
    literature = metrics["literature"]["micro"]
    for label, micro in (("micro strict", metrics["micro"]), ("micro literature", literature)):
        lines.append(f"{label:<24}{micro['precision']:7.3f}{micro['recall']:7.3f}{micro['f1']:7.3f}")
    return "\n".join(lines)


def format_data_issues(issues: dict[str, Any]) -> str:
    """One line per kind of gold the model cannot fully get; each is counted as a miss, never an abort."""
    return "\n".join(
        [
            f"gold values: {issues['gold_values']}",
            f"  not a verbatim substring of the title: {issues['values_not_in_title']}",
            f"  (offer, attribute) pairs with several values: {issues['attributes_with_several_values']}",
            f"  of attributes the model never saw: {issues['values_of_unseen_attributes']} "
            f"{issues['unseen_attributes'] or ''}".rstrip(),
            f"offers of categories the model never saw: {issues['offers_of_unseen_categories']} "
            f"{issues['unseen_categories'] or ''}".rstrip(),
        ]
    )


def write_charts(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per-attribute F1 bars and per-category F1 bars as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    per_attribute = metrics["per_attribute"]
    categories = {
        k: v for k, v in metrics["category_report"].items() if isinstance(v, dict) and "support" in v
    }
    categories = {k: v for k, v in categories.items() if k not in ("macro avg", "weighted avg")}
    for filename, title, names, values in (
        (
            "attribute_f1.png",
            "F1 per attribute",
            list(per_attribute),
            [m["f1"] for m in per_attribute.values()],
        ),
        ("category_f1.png", "Category F1", list(categories), [m["f1-score"] for m in categories.values()]),
    ):
        figure, axis = plt.subplots(figsize=(8, max(2.5, 0.28 * len(names) + 1)))
        axis.barh(names, values, color="#4C72B0")
        axis.set_xlim(0, 1)
        axis.invert_yaxis()
        axis.set_title(title)
        figure.tight_layout()
        path = out_dir / filename
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _memoised(run_batch: RunBatch) -> RunBatch:
    """Run each distinct padded batch once: decoding variants then share the model outputs."""
    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = input_ids.tobytes() + attention_mask.tobytes() + bytes(input_ids.shape)
        if key not in cache:
            cache[key] = run_batch(input_ids, attention_mask)
        return cache[key]

    return run


def evaluate_model_dir(
    model_dir: Path,
    data_path: Path,
    *,
    decode_method: str = "viterbi",
    restrict_to_category: bool = True,
    dev_split: bool = False,
    compare_decoding: bool = False,
) -> dict[str, Any]:
    """Score a model directory on an OA-Mine file, through ONNX Runtime when model.onnx exists.

    ``dev_split`` scores only the dev side of the split recorded in the model's metrics.json, with the model
    alone (its known values include the dev titles' values: `workers.model.lexicon`);
    ``compare_decoding`` adds micro-F1 for every decoding variant (viterbi/argmax x restricted or not).
    """
    from training.data import load_offers, split_offers

    offers = load_offers(data_path)
    if dev_split:
        config = json.loads((model_dir / "metrics.json").read_text())["config"]
        offers = split_offers(offers, config["dev_fraction"], config["split_salt"])[1]
    labels = ModelLabels.from_file(model_dir / "labels.json")
    encoder = TitleEncoder.from_model_dir(model_dir)
    if (model_dir / "model.onnx").is_file():
        run_batch, backend = onnx_runner(model_dir / "model.onnx"), "onnxruntime"
    else:
        from training.model import load_model, torch_runner

        run_batch, backend = torch_runner(load_model(model_dir)), "torch"
    run_batch = _memoised(run_batch)
    texts = [o.text for o in offers]
    predictions = predict(
        texts,
        run_batch,
        encoder,
        labels,
        decode_method=decode_method,
        restrict_to_category=restrict_to_category,
        known_values=not dev_split,  # `enrich train` puts the dev titles' values in the lexicon too
    )
    metrics = score(offers, predictions)
    metrics["known_values"] = bool(labels.known_values) and not dev_split
    metrics["data_issues"] = data_issues(offers, labels)
    metrics.update(backend=backend, data_path=str(data_path), model_dir=str(model_dir), dev_split=dev_split)
    if compare_decoding:
        # (method, restrict to the predicted category, snap to words, known values): one knob off at a time
        variants = [
            ("viterbi", True, True, True),
            ("viterbi", True, True, False),
            ("viterbi", False, True, True),
            ("viterbi", True, False, True),
            ("argmax", True, True, True),
            ("argmax", False, False, False),
        ]
        metrics["decoding_variants"] = {
            f"{method}{' +category' if restrict else ''}{' +words' if snap else ''}"
            f"{' +known values' if known else ''}": score(
                offers,
                predict(
                    texts,
                    run_batch,
                    encoder,
                    labels,
                    decode_method=method,
                    restrict_to_category=restrict,
                    snap_to_words=snap,
                    known_values=known,
                ),
            )["micro"]
            for method, restrict, snap, known in variants
        }
    return metrics


def print_report(metrics: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "category_report_text"}, indent=2))
        return
    print(format_table(metrics))
    print(
        f"\ncategory accuracy {metrics['category_accuracy']:.3f}, macro-F1 {metrics['category_macro_f1']:.3f}"
        f"\n{metrics['category_report_text']}"
    )
    if "data_issues" in metrics:
        print(format_data_issues(metrics["data_issues"]))
    if metrics.get("dev_split"):
        print(
            "decoded with the model alone: its known values include the dev titles' (workers.model.lexicon)"
        )
    for variant, micro in metrics.get("decoding_variants", {}).items():
        print(
            f"decoding {variant:<38} P {micro['precision']:.4f} R {micro['recall']:.4f} F1 {micro['f1']:.4f}"
        )
