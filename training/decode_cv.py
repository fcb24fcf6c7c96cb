"""`enrich cv-decode`: decoding-time levers scored across the folds of a finished `enrich cv`, no retraining.

Why: thresholds and decoding options chosen on the same offers they are scored on look better than they
are. Each fold's model already scored its held-out offers once and `enrich cv` kept its raw outputs
(``fold-<k>.outputs.npz``); here every variant decodes those outputs again with the serving code, and
whatever a variant tunes (per-attribute confidence thresholds) is tuned on the *other* folds' held-out
offers and applied to this fold (cross-fitting), so each fold's figure comes from offers its tuning never
saw; the known values (`workers.model.lexicon`) of a fold are those of its training side, as `enrich train`
on those offers builds them. Gains are paired per fold against the model alone, which must reproduce
the CV's own figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.cv import assign_folds, mean_sd
from training.data import Offer, load_offers
from training.evaluate import Prediction
from training.metrics import normalise_value, score
from workers.model.decode import ModelLabels, decode_listing
from workers.model.lexicon import (
    Lexicon,
    apply_known_values,
    build_known_values,
    fill_from_known_values,
    widen_to_known_values,
)

__all__ = [
    "MODEL_ALONE",
    "SERVED",
    "HeldOutFold",
    "decode_fold",
    "format_markdown",
    "load_held_out",
    "run_decode_cv",
    "tune_thresholds",
]

# An attribute with fewer predictions than this on the tuning side keeps threshold 0: too few to tune on.
MIN_PREDICTIONS_TO_TUNE = 20


@dataclass(frozen=True)
class HeldOutFold:
    """One fold's held-out offers with its model's raw outputs for each (``rows[i]`` is offer i's), and the
    known values of its training side (what `enrich train` on those offers puts in its labels.json: every
    labelled value, the early-stopping offers' too)."""

    fold: int
    offers: list[Offer]
    labels: ModelLabels
    rows: list[tuple[list[tuple[int, int]], np.ndarray, np.ndarray]]  # offsets, tag_probs, category_probs
    known: Lexicon


def load_held_out(
    cv_dir: Path,
    data_path: Path | str,
    folds: int,
    fold_seed: int,
    *,
    teacher: bool = False,
    partial: bool = False,
) -> list[HeldOutFold]:
    """Every fold's held-out offers (the fold assignment `enrich cv` used) with ``fold-<k>.outputs.npz``
    (``fold-<k>.teacher.outputs.npz`` with ``teacher``); with ``partial`` the folds not finished yet are
    left out instead of refused."""
    offers = load_offers(data_path)
    assignment = assign_folds(offers, folds, fold_seed)
    held_out = []
    for fold in range(folds):
        path = cv_dir / (f"fold-{fold}.teacher.outputs.npz" if teacher else f"fold-{fold}.outputs.npz")
        if not path.is_file() and partial:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a fold not finished, or run before outputs were kept)")
        raw = np.load(path)
        test = [o for o, f in zip(offers, assignment, strict=True) if f == fold]
        ends = np.cumsum(raw["lengths"])
        if len(ends) != len(test):
            raise ValueError(f"{path}: {len(ends)} rows for {len(test)} held-out offers (another data file?)")
        rows = []
        for index, end in enumerate(ends):
            start = end - raw["lengths"][index]
            offsets = [(int(s), int(e)) for s, e in raw["offsets"][start:end]]
            rows.append((offsets, raw["tag_probs"][start:end], raw["category_probs"][index]))
        labels = ModelLabels.from_dict(json.loads(str(raw["labels"])))
        training_side = [o for o, f in zip(offers, assignment, strict=True) if f != fold]
        known = Lexicon(build_known_values(pair for offer in training_side for pair in offer.values))
        held_out.append(HeldOutFold(fold, test, labels, rows, known))
    return held_out


def decode_fold(
    fold: HeldOutFold,
    *,
    several_values: bool = False,
    thresholds: dict[str, float] | None = None,
    rule: Callable[[str, list[Any], Sequence[str], Lexicon], list[Any]] | None = None,
) -> list[Prediction]:
    """The serving decode of the saved outputs, the model alone; ``rule`` then corrects the spans with the
    fold's known values (`workers.model.lexicon`); with ``thresholds`` an attribute whose confidence is
    below its threshold is dropped."""
    predictions = []
    for offer, (offsets, tag_probs, category_probs) in zip(fold.offers, fold.rows, strict=True):
        category, confidence, attributes = decode_listing(
            offer.text, offsets, tag_probs, category_probs, fold.labels, one_per_attribute=not several_values
        )
        if rule is not None:
            allowed = fold.labels.attributes_by_category.get(category, ())
            attributes = rule(offer.text, attributes, allowed, fold.known)
        if thresholds:
            attributes = [a for a in attributes if a.confidence >= thresholds.get(a.name, 0.0)]
        predictions.append(Prediction(category, confidence, attributes))
    return predictions


def tune_thresholds(offers: Sequence[Offer], predictions: Sequence[Prediction]) -> dict[str, float]:
    """Per-attribute confidence thresholds that maximise the strict micro-F1 on these offers (coordinate
    ascent over attributes, two sweeps): each candidate threshold is a confidence seen for that attribute."""
    scored: dict[str, list[tuple[float, bool]]] = {}
    tp = fp = fn = 0
    for offer, prediction in zip(offers, predictions, strict=True):
        gold = {(a, normalise_value(v)) for a, v in offer.values}
        found = {(a.name, normalise_value(a.value)): a for a in prediction.attributes}
        tp, fp, fn = (
            tp + len(gold & found.keys()),
            fp + len(found.keys() - gold),
            fn + len(gold - found.keys()),
        )
        for key, attribute in found.items():
            scored.setdefault(attribute.name, []).append((attribute.confidence, key in gold))
    thresholds: dict[str, float] = {}
    removed: dict[str, tuple[int, int]] = {}  # attribute -> (true, false) predictions its threshold drops

    def f1(t: int, f: int, n: int) -> float:
        return 2 * t / (2 * t + f + n) if t else 0.0

    for _ in range(2):
        for name, items in sorted(scored.items()):
            if len(items) < MIN_PREDICTIONS_TO_TUNE:
                continue
            gone_t, gone_f = removed.get(name, (0, 0))
            base_t, base_f, base_n = tp + gone_t, fp + gone_f, fn - gone_t  # as if this attribute kept all
            best = (f1(base_t, base_f, base_n), 0.0, 0, 0)
            items.sort()
            drop_t = drop_f = 0
            for confidence, correct in items:  # threshold just above this prediction's confidence
                drop_t, drop_f = drop_t + correct, drop_f + (not correct)
                value = f1(base_t - drop_t, base_f - drop_f, base_n + drop_t)
                if value > best[0] + 1e-12:
                    best = (value, float(np.nextafter(confidence, 1.0)), drop_t, drop_f)
            _, thresholds[name], new_t, new_f = best
            tp, fp, fn = base_t - new_t, base_f - new_f, base_n + new_t
            removed[name] = (new_t, new_f)
    return {name: t for name, t in thresholds.items() if t > 0}


Variant = Callable[[int, list[HeldOutFold]], list[Prediction]]


def _widen(title: str, attributes: list[Any], allowed: Sequence[str], known: Lexicon) -> list[Any]:
    return widen_to_known_values(title, attributes, known)


def _fill(title: str, attributes: list[Any], allowed: Sequence[str], known: Lexicon) -> list[Any]:
    return fill_from_known_values(title, attributes, allowed, known)


MODEL_ALONE = "model alone (the CV's figure)"
SERVED = "+ known values, both rules (as served)"


def _variants() -> dict[str, Variant]:
    def thresholds(k: int, folds: list[HeldOutFold]) -> list[Prediction]:
        others = [f for j, f in enumerate(folds) if j != k]  # the other folds' held-out offers
        tuned = tune_thresholds(
            [o for f in others for o in f.offers], [p for f in others for p in decode_fold(f)]
        )
        return decode_fold(folds[k], thresholds=tuned)

    return {
        MODEL_ALONE: lambda k, folds: decode_fold(folds[k]),
        "+ known values: spans widened": lambda k, folds: decode_fold(folds[k], rule=_widen),
        "+ known values: empty attributes filled": lambda k, folds: decode_fold(folds[k], rule=_fill),
        SERVED: lambda k, folds: decode_fold(folds[k], rule=apply_known_values),
        "+ per-attribute thresholds, tuned on the other folds": thresholds,
        "several values per attribute": lambda k, folds: decode_fold(folds[k], several_values=True),
    }


def run_decode_cv(held_out: list[HeldOutFold]) -> dict[str, Any]:
    """Every variant on every fold: strict and literature micro-F1, mean ± sd, and the paired gain."""
    report: dict[str, Any] = {}
    for name, variant in _variants().items():
        strict, literature = [], []
        for k in range(len(held_out)):
            metrics = score(held_out[k].offers, variant(k, held_out))
            strict.append(metrics["micro"]["f1"])
            literature.append(metrics["literature"]["micro"]["f1"])
        report[name] = {"strict_micro_f1": mean_sd(strict), "literature_micro_f1": mean_sd(literature)}
    plain = report[MODEL_ALONE]
    for entry in report.values():
        for metric in ("strict_micro_f1", "literature_micro_f1"):
            gains = [a - b for a, b in zip(entry[metric]["values"], plain[metric]["values"], strict=True)]
            entry[metric]["gain"] = mean_sd(gains)
            entry[metric]["folds_up"] = sum(g > 0 for g in gains)
    return report


def format_markdown(report: dict[str, Any], folds: int) -> str:
    lines = [
        f"| decoding ({folds} folds) | micro-F1 strict | gain, paired | micro-F1 literature | gain, paired |",
        "|---|---|---|---|---|",
    ]
    for name, entry in report.items():
        cells = []
        for metric in ("strict_micro_f1", "literature_micro_f1"):
            m = entry[metric]
            gain = m["gain"]
            cells += [
                f"{m['mean']:.4f} ± {m['sd']:.4f}",
                f"{gain['mean']:+.4f} ± {gain['sd']:.4f} ({m['folds_up']} of {folds} up)",
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
