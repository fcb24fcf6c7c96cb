"""The two attribute metrics, side by side, and what in a labelled file the model cannot get right.

**strict** (ours, :func:`score`): micro P/R/F1 over the sets of (attribute, value) pairs of each offer,
values compared after case folding and whitespace collapsing. Every gold value is a pair to find (an
attribute with two gold values is two pairs), and every predicted pair that is not gold is a false
positive, including a prediction of an attribute the gold does not mention.

**literature** (:func:`score_literature`, the rules of ExtractGPT's ``pieutils/evaluation.py``,
Brinkmann et al.): only the attributes present in an offer's gold (a value or "n/a") are looked at; a
prediction of any other attribute is ignored. Per (offer, attribute): gold values stripped, the prediction
compared case-sensitively and exactly; a prediction equal to any of the gold values is correct (VC), a
different one wrong (VW, counted in both precision and recall), a missing one a miss (VN); a gold "n/a"
with a prediction is a false positive (NV), with none nothing (NN). P = VC/(NV+VC+VW), R = VC/(VN+VC+VW).
Their code reports percentages rounded to 2 decimals; here fractions, unrounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from training.data import Offer
from workers.model.decode import Attribute, ModelLabels

__all__ = ["PredictionLike", "data_issues", "normalise_value", "prf", "score", "score_literature"]


class PredictionLike(Protocol):
    category: str
    attributes: list[Attribute]


def normalise_value(value: str) -> str:
    """The strict metric's comparison form: case folded, whitespace collapsed."""
    return " ".join(value.casefold().split())


def prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def score(offers: Sequence[Offer], predictions: Sequence[PredictionLike]) -> dict[str, Any]:
    """Strict micro P/R/F1 over normalised (attribute, value) pairs, per attribute, the category report,
    and the literature's metric next to it (``literature``)."""
    from sklearn.metrics import classification_report

    counts: dict[str, list[int]] = {}
    for offer, prediction in zip(offers, predictions, strict=True):
        gold = {(a, normalise_value(v)) for a, v in offer.values}
        found = {(a.name, normalise_value(a.value)) for a in prediction.attributes}
        for attribute, _ in gold | found:
            counts.setdefault(attribute, [0, 0, 0])
        for attribute, _ in gold & found:
            counts[attribute][0] += 1
        for attribute, _ in found - gold:
            counts[attribute][1] += 1
        for attribute, _ in gold - found:
            counts[attribute][2] += 1
    totals = np.array(list(counts.values()) or [[0, 0, 0]]).sum(axis=0)
    gold_categories = [o.category for o in offers]
    predicted_categories = [p.category for p in predictions]
    report = classification_report(gold_categories, predicted_categories, output_dict=True, zero_division=0)
    return {
        "micro": prf(*(int(x) for x in totals)),
        "per_attribute": {name: prf(*c) for name, c in sorted(counts.items())},
        "literature": score_literature(offers, predictions),
        "category_accuracy": float(
            np.mean([g == p for g, p in zip(gold_categories, predicted_categories, strict=True)])
        ),
        "category_macro_f1": float(report["macro avg"]["f1-score"]),
        "category_report": report,
        "category_report_text": classification_report(gold_categories, predicted_categories, zero_division=0),
        "offers": len(offers),
    }


def score_literature(offers: Sequence[Offer], predictions: Sequence[PredictionLike]) -> dict[str, Any]:
    """ExtractGPT's micro and macro (over attribute x gold category) P/R/F1, and the per-pair counts."""
    cells: dict[tuple[str, str], dict[str, int]] = {}
    for offer, prediction in zip(offers, predictions, strict=True):
        predicted: dict[str, str] = {}
        for attribute in prediction.attributes:
            predicted.setdefault(attribute.name, attribute.value)
        gold: dict[str, list[str]] = {}
        for name, value in offer.values:
            gold.setdefault(name, []).append(value.strip())
        for name in offer.absent:
            gold.setdefault(name, [])
        for name, values in gold.items():
            cell = cells.setdefault((name, offer.category), {"nn": 0, "nv": 0, "vn": 0, "vc": 0, "vw": 0})
            guess = predicted.get(name)
            if not values:
                cell["nn" if guess is None else "nv"] += 1
            elif guess is None:
                cell["vn"] += 1
            else:
                cell["vc" if guess in values else "vw"] += 1
    total = {"nn": 0, "nv": 0, "vn": 0, "vc": 0, "vw": 0}
    per_pair: dict[str, dict[str, Any]] = {}
    for (name, category), cell in sorted(cells.items()):
        for key, count in cell.items():
            total[key] += count
        if cell["nv"] + cell["vc"] + cell["vw"] + cell["vn"]:  # pairs with only NN are skipped, as there
            per_pair[f"{name}_{category}"] = {**_literature_prf(cell), **cell}
    macro = {
        key: float(np.mean([m[key] for m in per_pair.values()])) if per_pair else 0.0
        for key in ("precision", "recall", "f1")
    }
    return {"micro": {**_literature_prf(total), **total}, "macro": macro, "per_pair": per_pair}


def _literature_prf(cell: dict[str, int]) -> dict[str, float]:
    predicted, gold = cell["nv"] + cell["vc"] + cell["vw"], cell["vn"] + cell["vc"] + cell["vw"]
    precision = cell["vc"] / predicted if predicted else 0.0
    recall = cell["vc"] / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def data_issues(offers: Sequence[Offer], labels: ModelLabels) -> dict[str, Any]:
    """What in a labelled file the model cannot get (fully) right; the metrics count each as a miss.

    ``values_not_in_title``: gold values that are not a verbatim substring of the title (a span model
    outputs substrings; the strict metric still matches another casing); ``attributes_with_several_values``:
    (offer, attribute) pairs with more than one gold value (the model outputs one per attribute);
    ``values_of_unseen_attributes`` / ``offers_of_unseen_categories``: not in the model's labels.
    """
    known_attributes = {a for a in labels.tag_attributes if a is not None}
    known_categories = set(labels.categories)
    not_in_title = several = unseen_values = unseen_offers = 0
    unseen_attributes: set[str] = set()
    unseen_categories: set[str] = set()
    for offer in offers:
        names = [name for name, _ in offer.values]
        several += len({name for name in names if names.count(name) > 1})
        for name, value in offer.values:
            not_in_title += value not in offer.text
            if name not in known_attributes:
                unseen_values += 1
                unseen_attributes.add(name)
        if offer.category not in known_categories:
            unseen_offers += 1
            unseen_categories.add(offer.category)
    return {
        "gold_values": sum(len(offer.values) for offer in offers),
        "values_not_in_title": not_in_title,
        "attributes_with_several_values": several,
        "values_of_unseen_attributes": unseen_values,
        "unseen_attributes": sorted(unseen_attributes),
        "offers_of_unseen_categories": unseen_offers,
        "unseen_categories": sorted(unseen_categories),
    }
