"""Decoding levers scored across CV folds: the threshold tuning (pure logic) and `enrich cv-decode` on the
saved outputs of a real 2-fold tiny-model CV (see tests/test_training_cv.py for the CV itself)."""

from __future__ import annotations

import random

from training.data import Offer
from training.decode_cv import MIN_PREDICTIONS_TO_TUNE, tune_thresholds
from training.evaluate import Prediction
from training.metrics import score
from workers.model.decode import Attribute


def _offer_and_prediction(brand: str, guess: str, confidence: float) -> tuple[Offer, Prediction]:
    title = f"{brand} {guess} coffee"
    offer = Offer(title, "Coffee", (("Brand", brand),))
    start = title.index(guess, len(brand))
    return offer, Prediction(
        "Coffee", 0.9, [Attribute("Brand", guess, confidence, start, start + len(guess))]
    )


def test_a_threshold_drops_the_low_confidence_mistakes_and_raises_the_strict_f1() -> None:
    rng = random.Random(0)
    pairs = []
    for i in range(60):  # right answers are confident, wrong ones are not (with some overlap)
        right = i % 3 != 0
        confidence = rng.uniform(0.6, 1.0) if right else rng.uniform(0.2, 0.7)
        pairs.append(_offer_and_prediction(f"Brand{i}", f"Brand{i}" if right else f"Other{i}", confidence))
    offers, predictions = [o for o, _ in pairs], [p for _, p in pairs]
    thresholds = tune_thresholds(offers, predictions)
    assert 0.2 < thresholds["Brand"] <= 0.7
    kept = [
        Prediction(
            p.category,
            p.category_confidence,
            [a for a in p.attributes if a.confidence >= thresholds["Brand"]],
        )
        for p in predictions
    ]
    assert score(offers, kept)["micro"]["f1"] > score(offers, predictions)["micro"]["f1"]


def test_an_attribute_with_too_few_predictions_or_no_mistakes_keeps_everything() -> None:
    few = [_offer_and_prediction(f"B{i}", f"X{i}", 0.1) for i in range(MIN_PREDICTIONS_TO_TUNE - 1)]
    assert tune_thresholds([o for o, _ in few], [p for _, p in few]) == {}
    right = [_offer_and_prediction(f"B{i}", f"B{i}", 0.3 + i / 100) for i in range(40)]
    assert tune_thresholds([o for o, _ in right], [p for _, p in right]) == {}


def test_tuning_never_lowers_the_f1_of_the_offers_it_was_tuned_on() -> None:
    rng = random.Random(1)
    pairs = [
        _offer_and_prediction(f"B{i}", f"B{i}" if rng.random() < 0.7 else f"Y{i}", rng.random())
        for i in range(200)
    ]
    offers, predictions = [o for o, _ in pairs], [p for _, p in pairs]
    thresholds = tune_thresholds(offers, predictions)
    kept = [
        Prediction(p.category, 0.9, [a for a in p.attributes if a.confidence >= thresholds.get(a.name, 0.0)])
        for p in predictions
    ]
    assert score(offers, kept)["micro"]["f1"] >= score(offers, predictions)["micro"]["f1"] - 1e-12
