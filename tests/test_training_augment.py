"""Augmentation keeps every value a verbatim, correctly labelled substring of the new title."""

from __future__ import annotations

import random

from devtools.fixtures import DEFAULT_FIXTURE_PATH
from training.augment import (
    augment_offers,
    build_value_pool,
    change_case,
    change_punctuation,
    shuffle_parts,
    substitute_values,
)
from training.data import Offer, find_value_spans, load_offers

OFFER = Offer(
    "Crocs Women's Ballet Flat, Navy, 8 M US (Women's)",
    "Shoes",
    (
        ("Brand", "Crocs"),
        ("Gender", "Women's"),
        ("Shoe type", "Ballet Flat"),
        ("Color", "Navy"),
        ("Size", "8 M US"),
    ),
)


def assert_spans_valid(offer: Offer) -> None:
    spans = find_value_spans(offer.text, offer.values)
    assert {(s.attribute, offer.text[s.start : s.end]) for s in spans} == set(offer.values)


def test_value_substitution_uses_same_category_values_and_fixes_spans() -> None:
    pool = {
        ("Shoes", "Brand"): ["Crocs", "Søren Shoes"],
        ("Shoes", "Gender"): ["Men's", "Women's"],
        ("Tea", "Brand"): ["Twinings"],
    }
    swapped = substitute_values(OFFER, pool, random.Random(0), probability=1.0)
    assert swapped.text == "Søren Shoes Men's Ballet Flat, Navy, 8 M US (Men's)"  # repeat swapped everywhere
    assert ("Brand", "Søren Shoes") in swapped.values and ("Gender", "Men's") in swapped.values
    assert_spans_valid(swapped)


def test_surface_noise_changes_case_punctuation_and_order_but_not_labels() -> None:
    rng = random.Random(3)
    for noise in (change_case, change_punctuation, shuffle_parts):
        for _ in range(5):
            noisy = noise(OFFER, rng)
            assert_spans_valid(noisy)
            assert {a for a, _ in noisy.values} == {a for a, _ in OFFER.values}
    shuffled = {shuffle_parts(OFFER, random.Random(seed)).text for seed in range(10)}
    assert len(shuffled) > 1 and all(text.startswith("Crocs Women's Ballet Flat") for text in shuffled)


def test_augment_offers_is_deterministic_and_valid_on_the_fixtures() -> None:
    offers = load_offers(DEFAULT_FIXTURE_PATH)[:60]
    first = augment_offers(offers, copies=2, seed=5)
    assert first == augment_offers(offers, copies=2, seed=5) and len(first) == 120
    assert {o.text for o in first} != {o.text for o in offers}
    pool = build_value_pool(offers)
    for offer in first:
        assert_spans_valid(offer)
        assert all(
            value.casefold() in {v.casefold() for v in pool[(offer.category, a)]} for a, value in offer.values
        )
