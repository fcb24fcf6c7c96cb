"""Synthetic OA-Mine-format offers from templates, for tests and the demo (no real data needed).

``python -m devtools.fixtures`` regenerates ``devtools/harness/offers.jsonl`` byte for byte (fixed seed).
Titles mix brands with accents, repeated values ("Women's ... (US Women's 8)") and varied separators.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from devtools.paths import FIXTURE_OFFERS
from training.data import Offer, write_offers

__all__ = ["CATEGORIES", "DEFAULT_FIXTURE_PATH", "generate_offers", "main", "write_fixture"]

DEFAULT_FIXTURE_PATH = FIXTURE_OFFERS

# category -> (attribute -> candidate values, title templates using {Attribute} slots)
CATEGORIES: dict[str, tuple[dict[str, list[str]], list[str]]] = {
    "Coffee": (
        {
            "Brand": ["Lavazza", "Café Bustelo", "Peet's Coffee", "Illy", "Nescafé", "Death Wish Coffee"],
            "Roast type": ["Dark Roast", "Medium Roast", "Light Roast", "Espresso Roast"],
            "Item form": ["Whole Bean", "Ground", "K-Cup Pods", "Instant"],
            "Net content": ["12 oz", "2 lb", "32 Count", "1.1 Pound", "250 g"],
            "Flavor": ["French Vanilla", "Hazelnut", "Caramel", "Mocha"],
        },
        [
            "{Brand} {Roast type} {Item form} Coffee, {Net content}",
            "{Brand} {Flavor} Flavored Coffee, {Item form}, {Net content}",
            "{Brand} Coffee {Item form} - {Roast type} - {Net content} Bag",
        ],
    ),
    "Shoes": (
        {
            "Brand": ["Crocs", "Timberland", "Skechers", "Clarks", "Minnetonka", "Søren Shoes"],
            "Gender": ["Women's", "Men's", "Unisex"],
            "Shoe type": ["Ballet Flat", "Oxford", "Sneaker", "Moccasin", "Loafer"],
            "Color": ["Navy", "Black/White", "Red Patent", "Crème", "Olive"],
            "Size": ["8 M US", "10.5 M US", "7 W US", "12 M US"],
        },
        [
            "{Brand} {Gender} {Shoe type},{Color},{Size}",
            "{Brand} {Gender} Classic {Shoe type} - {Color} ({Gender} {Size})",
            "{Gender} {Shoe type} by {Brand}, {Color}, {Size}",
        ],
    ),
    "Tea": (
        {
            "Brand": ["Twinings", "Bigelow", "Yogi Tea", "Tazo", "Mariage Frères"],
            "Tea variety": ["Green Tea", "Earl Grey", "Chamomile", "English Breakfast", "Rooibos"],
            "Item form": ["Tea Bags", "Loose Leaf", "K-Cups"],
            "Pack size": ["Pack of 6", "Pack of 3", "Pack of 1"],
            "Net content": ["20 Count", "100 Count", "4 oz"],
        },
        [
            "{Brand} {Tea variety} {Item form}, {Net content} ({Pack size})",
            "{Brand} {Tea variety}, {Net content} {Item form}",
            "{Tea variety} {Item form} from {Brand} - {Net content}, {Pack size}",
        ],
    ),
    "Vitamin": (
        {
            "Brand": ["Nature Made", "NOW Supplements", "Garden of Life", "Solgar", "Nature's Bounty"],
            "Vitamin type": ["Vitamin D3", "Vitamin C", "Vitamin B12", "Multivitamin", "Zinc"],
            "Dosage": ["1000 IU", "500 mg", "2000 mcg", "50 mg"],
            "Item form": ["Softgels", "Tablets", "Capsules", "Gummies"],
            "Net content": ["100", "60", "250", "90"],
        },
        [
            "{Brand} {Vitamin type} {Dosage}, {Net content} {Item form}",
            "{Brand} {Vitamin type} {Item form} {Dosage} - {Net content} Count",
            "{Vitamin type} by {Brand}, {Dosage}, {Net content} {Item form}",
        ],
    ),
    "Sunscreen": (
        {
            "Brand": ["Neutrogena", "La Roche-Posay", "Banana Boat", "Coppertone", "Avène"],
            "Sun protection": ["SPF 30", "SPF 50", "SPF 70", "SPF 100+"],
            "Item form": ["Lotion", "Spray", "Stick", "Gel"],
            "Net content": ["3 fl oz", "6 oz", "1.7 fl. oz.", "8 Ounce"],
            "Skin type": ["Sensitive Skin", "Oily Skin", "All Skin Types"],
        },
        [
            "{Brand} Sunscreen {Item form} {Sun protection}, {Net content}",
            "{Brand} {Sun protection} Sunscreen for {Skin type}, {Item form}, {Net content}",
            "{Sun protection} {Item form} | {Brand} | {Skin type} | {Net content}",
        ],
    ),
    "Toothbrush": (
        {
            "Brand": ["Oral-B", "Colgate", "Philips Sonicare", "GUM", "Curaprox"],
            "Bristle": ["Soft", "Extra Soft", "Medium"],
            "Age": ["Kids", "Adult"],
            "Pack size": ["2 Count", "4 Pack", "6 Count"],
            "Color": ["Blue", "Pink", "Assorted Colors"],
        },
        [
            "{Brand} {Age} Toothbrush, {Bristle}, {Pack size}",
            "{Brand} {Bristle} Toothbrushes for {Age}, {Color}, {Pack size}",
            "{Age} Manual Toothbrush {Bristle} - {Brand} - {Color} ({Pack size})",
        ],
    ),
}


def _fill(template: str, choice: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """Render a template; only the attributes it mentions become values."""
    text = template.format(**choice)
    used = [(name, value) for name, value in choice.items() if "{" + name + "}" in template]
    return text, used


def generate_offers(count: int = 300, seed: int = 7) -> list[Offer]:
    """``count`` offers spread evenly over :data:`CATEGORIES`, deterministic for a seed."""
    rng = random.Random(seed)
    names = sorted(CATEGORIES)
    offers: list[Offer] = []
    for index in range(count):
        category = names[index % len(names)]
        vocab, templates = CATEGORIES[category]
        choice = {attribute: rng.choice(values) for attribute, values in vocab.items()}
        text, used = _fill(rng.choice(templates), choice)
        offers.append(Offer(text=text, category=category, values=tuple(used)))
    rng.shuffle(offers)
    return offers


def write_fixture(path: Path = DEFAULT_FIXTURE_PATH, count: int = 300, seed: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_offers(path, generate_offers(count, seed))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the synthetic OA-Mine-format fixture offers")
    parser.add_argument("--out", type=Path, default=DEFAULT_FIXTURE_PATH, help="output JSON-lines file")
    parser.add_argument("--count", type=int, default=300, help="number of offers")
    parser.add_argument("--seed", type=int, default=7, help="random seed")
    args = parser.parse_args(argv)
    print(write_fixture(args.out, args.count, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
