"""`enrich cv`: k-fold cross-validation of the configured training, both metrics, mean ± sd over folds.

Why: the 206 dev offers of the fixed split move about ±1 point with the seed, and the best epoch and the
decoding options were chosen on them, so a gain measured there may be noise or tuning to that split. Here
every offer is scored once, by a model that never saw it and did not pick its epoch on it.

Folds: offers with the same title form one group (a duplicate across folds would leak), groups are dealt
round-robin within each category in the order of a salted hash (stratified by category, fixed by
``seed``). Per fold the training side is split again with the config's own hash split (``dev_fraction``,
``split_salt``) for early stopping; the held-out fold is scored once, after training, with the serving
decode (torch outputs, ``workers.model`` decoding).

Resumable: each finished fold is written to ``<out>/fold-<k>.json`` with a fingerprint of everything that
decides its result (configs, folds, fold seed, the training file's bytes); a later run with the same
``--out`` keeps the folds whose fingerprint matches and trains only the rest (a teacher CV takes hours on a
small machine and may be stopped). Next to it, ``fold-<k>.predictions.jsonl`` (and
``fold-<k>.teacher.…``) hold every held-out offer's decoded prediction with its confidences, and
``fold-<k>.outputs.npz`` the model's raw probabilities with the token offsets and labels, so decoding-time
levers (thresholds, constraints, lexicons) can be tuned and scored across folds without retraining.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.data import Offer, add_extra_offers, load_offers, split_offers
from training.metrics import data_issues

__all__ = ["assign_folds", "fold_fingerprint", "format_markdown", "mean_sd", "run_cv", "summarise"]


def assign_folds(offers: Sequence[Offer], folds: int, seed: int = 0) -> list[int]:
    """The fold (0..folds-1) of each offer: stratified by category, identical titles together."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    groups: dict[str, list[int]] = {}
    for index, offer in enumerate(offers):
        groups.setdefault(offer.text, []).append(index)
    by_category: dict[str, list[str]] = {}
    for text, members in groups.items():
        by_category.setdefault(offers[members[0]].category, []).append(text)

    def key(text: str) -> bytes:
        return hashlib.sha256(f"cv-{seed}\x00{text}".encode()).digest()

    assignment = [0] * len(offers)
    dealt = 0  # carried across categories, so small categories do not all start in fold 0
    for category in sorted(by_category):
        for text in sorted(by_category[category], key=key):
            for index in groups[text]:
                assignment[index] = dealt % folds
            dealt += 1
    return assignment


def _test_metrics(
    config: TrainConfig, result: Any, encoder: Any, labels: Any, test_offers: list[Offer]
) -> dict[str, Any]:
    """Score a fitted model once on the held-out fold, with the serving decode. The decoded predictions
    and the model's raw outputs go along (``predictions``, ``outputs``) to be saved next to the fold."""
    from training.evaluate import predict
    from training.metrics import score
    from training.model import torch_runner

    run_batch, batches = torch_runner(result.model), []

    def recorded(input_ids: Any, attention_mask: Any) -> Any:
        batches.append(run_batch(input_ids, attention_mask))
        return batches[-1]

    texts = [offer.text for offer in test_offers]
    predictions = predict(
        texts,
        recorded,
        encoder,
        labels,
        batch_size=_PREDICT_BATCH,
        decode_method=config.decode_method,
        restrict_to_category=config.restrict_to_category,
        known_values=False,  # the model alone: `enrich cv-decode` adds the lexicon, fold by fold
    )
    metrics = score(test_offers, predictions)
    metrics.pop("category_report_text")
    metrics["predictions"] = [
        {"title": offer.text, **asdict(prediction)}
        for offer, prediction in zip(test_offers, predictions, strict=True)
    ]
    metrics["outputs"] = _raw_outputs(texts, encoder, labels, batches)
    metrics["data_issues"] = data_issues(test_offers, labels)
    metrics["best_epoch"] = max(result.history, key=lambda h: h["dev_f1"])["epoch"]
    metrics["train_seconds"] = round(result.seconds, 1)
    return metrics


_PREDICT_BATCH = 64


def _raw_outputs(texts: list[str], encoder: Any, labels: Any, batches: list[Any]) -> dict[str, Any]:
    """Each title's tag probabilities for its real tokens (concatenated; ``lengths`` splits them), the
    tokens' character offsets and the category probabilities: enough to decode again with other options."""
    import numpy as np

    tags, offsets, lengths, categories = [], [], [], []
    for batch, first in zip(batches, range(0, len(texts), _PREDICT_BATCH), strict=True):
        tag_probs, category_probs = batch
        for row, item in enumerate(encoder.encode(texts[first : first + _PREDICT_BATCH])):
            tags.append(np.asarray(tag_probs[row][: len(item.offsets)], dtype=np.float32))
            offsets.append(np.asarray(item.offsets, dtype=np.int32).reshape(-1, 2))
            lengths.append(len(item.offsets))
            categories.append(np.asarray(category_probs[row], dtype=np.float32))
    return {
        "tag_probs": np.concatenate(tags),
        "offsets": np.concatenate(offsets),
        "lengths": np.asarray(lengths, dtype=np.int32),
        "category_probs": np.stack(categories),
        "labels": json.dumps(labels.to_dict()),
    }


def _fold_metrics(
    config: TrainConfig,
    train_offers: list[Offer],
    test_offers: list[Offer],
    run_dir: Path,
    teacher_config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train on the fold's training side and score on its test side. With ``teacher_config`` a teacher is
    first trained on the same side (so it never saw the test fold either), scored too, and distilled."""
    from training.distil import Teacher
    from training.train import fit, prepare

    fit_train, fit_dev = split_offers(train_offers, config.dev_fraction, config.split_salt)
    if not fit_train or not fit_dev:
        raise ValueError(f"the early-stopping split of {len(train_offers)} offers left an empty side")
    fit_train, _ = add_extra_offers(fit_train, [*fit_dev, *test_offers], config.extra_data_paths)
    teacher, teacher_metrics = None, None
    if teacher_config is not None:
        t_base, t_labels, t_encoder, t_offers = prepare(teacher_config, fit_train, run_dir / "teacher")
        t_result = fit(teacher_config, t_base, t_labels, t_encoder, t_offers, fit_dev, None)
        teacher_metrics = _test_metrics(teacher_config, t_result, t_encoder, t_labels, test_offers)
        teacher = Teacher(t_result.model, t_encoder, t_labels)
    base_dir, labels, encoder, fit_offers = prepare(config, fit_train, run_dir)
    result = fit(config, base_dir, labels, encoder, fit_offers, fit_dev, None, teacher)
    metrics = _test_metrics(config, result, encoder, labels, test_offers)
    metrics["train_offers"], metrics["early_stopping_offers"] = len(fit_train), len(fit_dev)
    if teacher_metrics is not None:
        metrics["teacher"] = teacher_metrics
    return metrics


_NOT_RESULT_FIELDS = ("progress", "num_threads", "output_root", "version", "save_checkpoints")


def fold_fingerprint(
    config: TrainConfig, teacher_config: TrainConfig | None, folds: int, fold_seed: int, data: bytes
) -> str:
    """What a fold's result depends on; fields that only change speed or where files go are left out."""

    def fields(c: TrainConfig | None) -> dict[str, Any] | None:
        if c is None:
            return None
        return {k: v for k, v in c.to_dict().items() if k not in _NOT_RESULT_FIELDS}

    identity = {
        "config": fields(config),
        "teacher": fields(teacher_config),
        "folds": folds,
        "fold_seed": fold_seed,
        "data_sha256": hashlib.sha256(data).hexdigest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _kept_fold(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The metrics of an earlier run's fold, if it was run with the same fingerprint."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        return None
    return saved.get("metrics")


def _write_held_out(out_dir: Path, stem: str, metrics: dict[str, Any]) -> None:
    """``<stem>.predictions.jsonl`` (decoded) and ``<stem>.outputs.npz`` (raw), popped from ``metrics``."""
    import numpy as np

    predictions, outputs = metrics.pop("predictions", None), metrics.pop("outputs", None)
    if predictions is not None:
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
        (out_dir / f"{stem}.predictions.jsonl").write_text(lines)
    if outputs is not None:
        np.savez_compressed(out_dir / f"{stem}.outputs.npz", **outputs)


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample sd (0 for one value) and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": list(values),
    }


def summarise(fold_metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample sd over folds of each headline figure; per attribute the mean strict F1 over the
    folds where it had gold values, and its gold count over all folds."""
    headline = {
        "strict_micro_f1": [m["micro"]["f1"] for m in fold_metrics],
        "strict_micro_precision": [m["micro"]["precision"] for m in fold_metrics],
        "strict_micro_recall": [m["micro"]["recall"] for m in fold_metrics],
        "literature_micro_f1": [m["literature"]["micro"]["f1"] for m in fold_metrics],
        "literature_micro_precision": [m["literature"]["micro"]["precision"] for m in fold_metrics],
        "literature_micro_recall": [m["literature"]["micro"]["recall"] for m in fold_metrics],
        "literature_macro_f1": [m["literature"]["macro"]["f1"] for m in fold_metrics],
        "category_accuracy": [m["category_accuracy"] for m in fold_metrics],
        "category_macro_f1": [m["category_macro_f1"] for m in fold_metrics],
    }
    if all("teacher" in m for m in fold_metrics):
        headline["teacher_strict_micro_f1"] = [m["teacher"]["micro"]["f1"] for m in fold_metrics]
        headline["teacher_literature_micro_f1"] = [
            m["teacher"]["literature"]["micro"]["f1"] for m in fold_metrics
        ]
    attributes: dict[str, dict[str, Any]] = {}
    for metrics in fold_metrics:
        for name, m in metrics["per_attribute"].items():
            entry = attributes.setdefault(name, {"f1": [], "gold": 0})
            entry["gold"] += m["tp"] + m["fn"]
            if m["tp"] + m["fn"]:
                entry["f1"].append(m["f1"])
    per_attribute = {
        name: {"gold": e["gold"], "folds": len(e["f1"]), **mean_sd(e["f1"] or [0.0])}
        for name, e in sorted(attributes.items())
    }
    return {
        "folds": len(fold_metrics),
        **{k: mean_sd(v) for k, v in headline.items()},
        "per_attribute": per_attribute,
    }


def _distillation_lines(summary: dict[str, Any]) -> list[str]:
    config, teacher = summary["config"], summary.get("teacher_config")
    if teacher is not None:
        return [
            "",
            f"Distilled (alpha {config['distil_alpha']}, T {config['distil_temperature']}) from a teacher "
            f"trained per fold on the fold's own training side (base `{teacher['base_model']}`).",
        ]
    return []


def _kept_note(summary: dict[str, Any]) -> str:
    kept = summary.get("folds_kept_from_earlier_runs") or []
    if not kept:
        return ""
    return f" (this run; folds {', '.join(str(k + 1) for k in kept)} kept from earlier runs)"


def format_markdown(summary: dict[str, Any]) -> str:
    """The CV report: headline figures (mean ± sd) and the per-attribute table."""
    rows = [
        ("micro-F1, strict (ours)", "strict_micro_f1"),
        ("micro-precision, strict", "strict_micro_precision"),
        ("micro-recall, strict", "strict_micro_recall"),
        ("micro-F1, literature (ExtractGPT rules)", "literature_micro_f1"),
        ("macro-F1, literature (attribute x category)", "literature_macro_f1"),
        ("category accuracy", "category_accuracy"),
        ("category macro-F1", "category_macro_f1"),
        ("teacher (trained per fold): micro-F1, strict", "teacher_strict_micro_f1"),
        ("teacher (trained per fold): micro-F1, literature", "teacher_literature_micro_f1"),
    ]
    config = summary["config"]
    lines = [
        f"# Cross-validation: {summary['folds']} folds, {summary['offers']} offers",
        "",
        f"Data `{config['data_path']}`, base `{config['base_model']}`, max {config['epochs']} epochs, "
        f"augment {config['augment']}, seed {config['seed']}, fold seed {summary['fold_seed']}; "
        f"{summary['seconds']:.0f} s{_kept_note(summary)}. Metric definitions: docs/model-quality.md.",
        *_distillation_lines(summary),
        "",
        "| metric | mean ± sd | per fold |",
        "|---|---|---|",
    ]
    for label, key in rows:
        if key not in summary:
            continue
        figure = summary[key]
        folds = ", ".join(f"{v:.4f}" for v in figure["values"])
        lines.append(f"| {label} | {figure['mean']:.4f} ± {figure['sd']:.4f} | {folds} |")
    issues = summary["data_issues"]
    lines += [
        "",
        f"Gold the model could not fully get (counted as misses): {issues['values_not_in_title']} values not "
        f"in the title, {issues['attributes_with_several_values']} attributes with several values, "
        f"{issues['values_of_unseen_attributes']} values of attributes its fold never trained on, "
        f"{issues['offers_of_unseen_categories']} offers of unseen categories.",
        "",
        "| attribute | strict F1 mean ± sd | folds | gold values |",
        "|---|---|---|---|",
    ]
    for name, m in summary["per_attribute"].items():
        lines.append(f"| {name} | {m['mean']:.3f} ± {m['sd']:.3f} | {m['folds']} | {m['gold']} |")
    return "\n".join(lines) + "\n"


def run_cv(
    config: TrainConfig,
    folds: int = 5,
    out_dir: Path | None = None,
    fold_seed: int = 0,
    teacher_config: TrainConfig | None = None,
) -> Path:
    """Train and score ``folds`` models (with ``teacher_config``: a teacher per fold, then the distilled
    student); writes ``cv.json`` and ``cv.md`` to ``out_dir`` and returns it."""
    import torch

    if config.distil_from and teacher_config is None:
        raise ValueError(
            f"a fixed teacher ({config.distil_from}) trained on this file has seen the test folds: its "
            "student's CV figures would be optimistic; give --teacher-config to train a teacher per fold"
        )
    torch.set_num_threads(config.num_threads)
    started = time.perf_counter()
    offers = load_offers(config.data_path)
    assignment = assign_folds(offers, folds, fold_seed)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_dir or Path(config.output_root) / "cv" / f"{config.name}-{stamp}")
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = fold_fingerprint(
        config, teacher_config, folds, fold_seed, Path(config.data_path).read_bytes()
    )
    fold_metrics, kept = [], []
    for fold in range(folds):
        saved = _kept_fold(out_dir / f"fold-{fold}.json", fingerprint)
        if saved is not None:
            fold_metrics.append(saved)
            kept.append(fold)
            print(f"fold {fold + 1}/{folds}: kept from an earlier run ({out_dir / f'fold-{fold}.json'})")
            continue
        test = [o for o, f in zip(offers, assignment, strict=True) if f == fold]
        train = [o for o, f in zip(offers, assignment, strict=True) if f != fold]
        metrics = _fold_metrics(config, train, test, out_dir / f".fold-{fold}", teacher_config)
        shutil.rmtree(out_dir / f".fold-{fold}", ignore_errors=True)  # the tiny base, when there is one
        metrics["fold"], metrics["test_offers"] = fold, len(test)
        _write_held_out(out_dir, f"fold-{fold}", metrics)
        if "teacher" in metrics:
            _write_held_out(out_dir, f"fold-{fold}.teacher", metrics["teacher"])
        fold_metrics.append(metrics)
        record = {"fingerprint": fingerprint, "metrics": metrics}
        (out_dir / f"fold-{fold}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
        if config.progress:
            print(
                f"fold {fold + 1}/{folds}: strict micro-F1 {metrics['micro']['f1']:.4f}, literature "
                f"{metrics['literature']['micro']['f1']:.4f}, category accuracy "
                f"{metrics['category_accuracy']:.3f} ({len(test)} offers, {metrics['train_seconds']:.0f} s)"
                + (f"; teacher {metrics['teacher']['micro']['f1']:.4f}" if "teacher" in metrics else ""),
                flush=True,
            )
    summary = summarise(fold_metrics)
    totals = [m["data_issues"] for m in fold_metrics]
    summary.update(
        config=config.to_dict(),
        teacher_config=teacher_config.to_dict() if teacher_config else None,
        offers=len(offers),
        fold_seed=fold_seed,
        seconds=round(time.perf_counter() - started, 1),
        folds_kept_from_earlier_runs=kept,
        fingerprint=fingerprint,
        data_issues={k: sum(t[k] for t in totals) for k, v in totals[0].items() if isinstance(v, int)},
        per_fold=fold_metrics,
    )
    (out_dir / "cv.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    (out_dir / "cv.md").write_text(format_markdown(summary))
    return out_dir
