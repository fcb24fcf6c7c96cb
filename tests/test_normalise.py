"""Normalised values: every rule of workers.model.normalise pinned on hand-made values (pure functions)."""

from __future__ import annotations

import fastjsonschema
import pytest

from workers.contract.events import load_schema
from workers.contract.results import ListingResult
from workers.model.decode import Attribute
from workers.model.normalise import Normalised, normalize, normalize_text, parse_number, parse_quantity


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("Lavazza", "lavazza"),
        ("  Dark   Roast ", "dark roast"),
        ("Lace-Up", "lace up"),
        ("Lace up", "lace up"),
        ("3-Ply", "3 ply"),
        ("3-6 Months", "3-6 months"),  # a range between digits keeps its hyphen
        ("Black / White", "black/white"),
        ("Pineapple,Orange ,Lime", "pineapple, orange, lime"),
        ("10,000 IU", "10,000 iu"),  # a comma inside a number is not a list separator
        ("ＮＩＫＥ", "nike"),  # full-width letters: NFKC
        ("Straße", "strasse"),  # casefold, not lower
        ("Nescafé", "nescafé"),  # accents stay: they can tell brands apart
        ("Antioxidant Protection*", "antioxidant protection*"),
        (", Brown,", "brown"),
    ],
)
def test_text_unifies_case_and_spacing(value: str, text: str) -> None:
    assert normalize_text(value) == text
    assert normalize(value) == Normalised(text)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("12", 12.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("1,000", 1000.0),  # comma + exactly three digits: thousands
        ("10,000", 10000.0),
        ("1,5", 1.5),  # any other single comma: decimal comma
        ("1,25", 1.25),
        ("1,000,000", 1000000.0),
        ("1.000.000", 1000000.0),
        ("1,234.5", 1234.5),
        ("1.234,5", 1234.5),
        ("1/2", 0.5),
        ("1 1/2", 1.5),
    ],
)
def test_numbers(text: str, number: float) -> None:
    assert parse_number(text) == pytest.approx(number)


@pytest.mark.parametrize(
    ("value", "amount", "unit"),
    [
        ("12 oz", 340.194, "g"),  # bare oz: avoirdupois ounce (mass)
        ("12oz", 340.194, "g"),
        ("12 OZ.", 340.194, "g"),
        ("16 Ounces", 453.592, "g"),
        ("8 Fl Oz", 236.588, "ml"),  # fl oz: US fluid ounce (volume)
        ("8 fl. oz.", 236.588, "ml"),
        ("32 Fluid Ounce", 946.353, "ml"),
        ("2 LBS", 907.185, "g"),
        ("1-Pound", 453.592, "g"),
        ("1 1/2 lbs", 680.389, "g"),
        ("1/2 lb", 226.796, "g"),
        ("1 kg", 1000.0, "g"),
        ("1,5 kg", 1500.0, "g"),
        ("250 g", 250.0, "g"),
        ("500mg", 0.5, "g"),
        ("5,000mcg", 0.005, "g"),
        ("1.5 L", 1500.0, "ml"),
        ("750ml", 750.0, "ml"),
        ("33 cl", 330.0, "ml"),
        ("2 Liters", 2000.0, "ml"),
        ("250 Count", 250.0, "count"),
        ("60 ct", 60.0, "count"),
        ("12-Count", 12.0, "count"),
        ("6 Pack", 6.0, "count"),
        ("10 pcs", 10.0, "count"),
        ("Pack of 2", 2.0, "count"),
        ("(Pack of 3)", 3.0, "count"),
        ("500克", 500.0, "g"),
        ("3 斤", 1500.0, "g"),  # market jin, 500 g
        ("2公斤", 2000.0, "g"),
        ("250毫升", 250.0, "ml"),
        ("1.5升", 1500.0, "ml"),
        ("2包", 2.0, "count"),
        ("10条", 10.0, "count"),
        ("１２ｏｚ", 340.194, "g"),  # full-width digits and letters
    ],
)
def test_single_quantities_are_converted(value: str, amount: float, unit: str) -> None:
    found = parse_quantity(value)
    assert found is not None and found.pack is None
    assert (found.amount, found.unit) == (pytest.approx(amount), unit)
    assert normalize(value) == found


@pytest.mark.parametrize(
    ("value", "pack", "amount", "unit", "text"),
    [
        ("2 x 16 oz", 2, 453.592, "g", "2 x 453.592 g"),
        ("2x16oz", 2, 453.592, "g", "2 x 453.592 g"),
        ("16 oz x 3", 3, 453.592, "g", "3 x 453.592 g"),
        ("16 oz (Pack of 2)", 2, 453.592, "g", "2 x 453.592 g"),
        ("12 Fl Oz, Pack of 6", 6, 354.882, "ml", "6 x 354.882 ml"),
        ("16oz, 2 pack", 2, 453.592, "g", "2 x 453.592 g"),
        ("4 × 60 Count", 4, 60.0, "count", "4 x 60 count"),
    ],
)
def test_packs(value: str, pack: int, amount: float, unit: str, text: str) -> None:
    assert normalize(value) == Normalised(text, pytest.approx(amount), unit, pack)


@pytest.mark.parametrize(
    "value",
    [
        "500",  # no unit: nothing to convert
        "10,000 IU",  # not a mass or volume
        "1700mcg/1000mcg",  # two quantities
        "Vitamin D3 5000 IU",
        "2 Bottles",  # bottles are not one of the count words
        "5 gal",  # the g of "gal" is not grams
        "2 lemons",  # nor the l of "lemons" litres
        "SPF 50+",
        "12 D",
        "0 x 16 oz",  # a pack of nothing
        "Dark Roast",
    ],
)
def test_values_that_are_not_exactly_one_quantity_stay_text(value: str) -> None:
    assert parse_quantity(value) is None
    assert normalize(value) == Normalised(normalize_text(value))


def test_amounts_keep_six_significant_digits_and_print_without_exponent() -> None:
    assert normalize("5 mcg").text == "0.000005 g"
    assert normalize("2 kg").text == "2000 g"
    assert normalize("12 oz").amount == 340.194


def test_very_long_text_is_cut_to_the_schema_limit() -> None:
    assert len(normalize_text("\ufdfa" * 512)) == 1024  # one ligature: 18 characters under NFKC


def test_every_emitted_attribute_carries_it_and_the_event_schema_accepts_it() -> None:
    result = ListingResult.from_decoded(
        "Coffee",
        0.9,
        [Attribute("Brand", "LAVAZZA", 0.9, 0, 7), Attribute("Net content", "2 x 16 oz", 0.8, 9, 18)],
    )
    assert [a["normalized"] for a in result.attributes] == [
        {"text": "lavazza"},
        {"text": "2 x 453.592 g", "amount": 453.592, "unit": "g", "pack": 2},
    ]
    attributes_schema = load_schema("listing-attributes")["properties"]["attributes"]
    fastjsonschema.compile(attributes_schema)(result.attributes)
    old_producer = [{k: v for k, v in a.items() if k != "normalized"} for a in result.attributes]
    fastjsonschema.compile(attributes_schema)(old_producer)  # optional: events without it still valid
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        fastjsonschema.compile(attributes_schema)([{**result.attributes[0], "normalized": {"unit": "g"}}])
