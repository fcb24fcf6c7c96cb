"""Known values (workers.model.lexicon): the lexicon built from training values, its two rules, and its
place in labels.json. Pure logic; the end-to-end effect is measured by `enrich cv-decode` (README)."""

from __future__ import annotations

from training.data import Offer, build_labels
from workers.model.decode import Attribute, ModelLabels
from workers.model.lexicon import (
    FILL_CONFIDENCE,
    Lexicon,
    apply_known_values,
    build_known_values,
    fill_from_known_values,
    widen_to_known_values,
)


def test_known_values_are_case_insensitive_with_the_most_frequent_spelling_and_a_count() -> None:
    pairs = [
        ("Shoe type", "Wing-Tip Oxford"),
        ("Shoe type", "wing-tip oxford "),
        ("Shoe type", "Wing-Tip Oxford"),
    ]
    assert build_known_values([*pairs, ("Color", "Olive"), ("Color", "  ")]) == {
        "Color": {"olive": ("Olive", 1)},
        "Shoe type": {"wing-tip oxford": ("Wing-Tip Oxford", 3)},
    }


def test_an_unknown_span_inside_a_longer_known_value_is_widened_to_it_in_the_titles_spelling() -> None:
    known = Lexicon(build_known_values([("Shoe type", "Wing-Tip Oxford"), ("Color", "Olive")]))
    title = "Mens WING-TIP Oxford Shoes, Olive Green"
    oxford = Attribute("Shoe type", "Oxford", 0.8, title.index("Oxford"), title.index("Oxford") + 6)
    olive = Attribute("Color", "Olive", 0.9, title.index("Olive"), title.index("Olive") + 5)
    assert widen_to_known_values(title, [oxford, olive], known) == [
        Attribute("Shoe type", "WING-TIP Oxford", 0.8, 5, 20),
        olive,  # already a known value: never widened
    ]
    # a span that is itself known stays, even inside a longer known value
    both = Lexicon(build_known_values([("Shoe type", "Wing-Tip Oxford"), ("Shoe type", "Oxford")]))
    assert widen_to_known_values(title, [oxford], both) == [oxford]
    # a known value must stand as whole words: "Tip Oxfords" does not hold "tip oxford"
    tip = Attribute("Shoe type", "Tip", 0.5, 0, 3)
    assert widen_to_known_values(
        "Tip Oxfords", [tip], Lexicon(build_known_values([("Shoe type", "Tip Oxford")]))
    ) == [tip]


def test_an_empty_allowed_attribute_is_filled_only_with_a_value_seen_twice_and_never_over_a_span() -> None:
    known = Lexicon(
        build_known_values(
            [("Brand", "Lavazza"), ("Brand", "lavazza"), ("Roast type", "Dark Roast"), ("Flavor", "Dark")] * 2
            + [("Specialty", "Organic")]  # seen once: not enough to fill
        )
    )
    title = "Lavazza Dark Roast Organic Coffee"
    roast = Attribute("Roast type", "Dark Roast", 0.9, 8, 18)
    allowed = ["Brand", "Roast type", "Flavor", "Specialty"]
    assert fill_from_known_values(title, [roast], allowed, known) == [
        roast,
        Attribute("Brand", "Lavazza", FILL_CONFIDENCE, 0, 7),  # "Dark" overlaps the roast: no flavor
    ]
    assert fill_from_known_values(title, [roast], ["Roast type"], known) == [roast]  # Brand not allowed


def test_without_known_values_or_a_category_restriction_the_rules_change_nothing_or_only_widen() -> None:
    title = "Lavazza Dark Roast Coffee"
    dark = Attribute("Roast type", "Dark", 0.9, 8, 12)
    assert apply_known_values(title, [dark], ["Brand", "Roast type"], Lexicon({})) == [dark]
    known = Lexicon(
        build_known_values([("Brand", "Lavazza"), ("Brand", "Lavazza"), ("Roast type", "Dark Roast")])
    )
    widened = Attribute("Roast type", "Dark Roast", 0.9, 8, 18)
    assert apply_known_values(title, [dark], None, known) == [widened]  # no category: no fill
    assert apply_known_values(title, [dark], ["Brand", "Roast type"], known) == [
        widened,
        Attribute("Brand", "Lavazza", FILL_CONFIDENCE, 0, 7),
    ]


def test_known_values_travel_in_labels_json_and_older_labels_stay_byte_identical() -> None:
    offers = [Offer("Lavazza Dark Roast", "Coffee", (("Brand", "Lavazza"),))]
    labels = build_labels(offers)
    assert labels.known_values == {} and "known_values" not in labels.to_dict()  # old models: same digest
    with_values = ModelLabels.from_attributes(
        ["Brand"], {"Coffee": ["Brand"]}, build_known_values([("Brand", "Lavazza")])
    )
    assert with_values.to_dict()["known_values"] == {"Brand": {"lavazza": ["Lavazza", 1]}}
    assert ModelLabels.from_dict(with_values.to_dict()) == with_values


def test_values_that_begin_with_a_sign_or_end_a_title_are_found_and_the_labels_index_them_once() -> None:
    known = build_known_values(
        [("Specialty", "#1 Seller"), ("Specialty", "#1 seller"), ("Size", "10 oz")] * 2
    )
    lexicon = Lexicon(known)
    title = "Coffee #1 Seller, 10 OZ"
    assert lexicon.occurrences(title, "Specialty", 2) == [(7, 16)]
    assert lexicon.occurrences(title, "Size", 2) == [(18, 23)]
    assert lexicon.occurrences("Coffee 10 ozs", "Size", 1) == []  # not a whole word
    labels = ModelLabels.from_attributes(["Size"], {"Coffee": ["Size"]}, known)
    assert labels.lexicon is labels.lexicon and labels.lexicon.is_known("Size", "10 OZ")
