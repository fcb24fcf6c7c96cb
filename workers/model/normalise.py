"""Normalised attribute values: one spelling per meaning, and quantities in one unit per dimension.

Pure functions, no model and no torch: the worker adds ``normalize(value).to_json()`` to each attribute it
emits (the optional ``normalized`` field of listing-attributes v1), and ``enrich predict`` does the same.

Rules (docs/model-quality.md has the full table):

- **text**: Unicode NFKC (full-width "１２ｏｚ" becomes "12oz"), lower case (``str.casefold``), a hyphen
  next to a letter becomes a space ("Lace-Up" = "Lace Up", "3-Ply" = "3 Ply"; "3-6" keeps its hyphen),
  no spaces around "/", one space after a comma (not inside a number), runs of whitespace collapsed,
  ends stripped.
- **quantity**, when the whole value is one (nothing else in it, so "Vitamin D3 5000 IU" or "500" stay
  text): a number and a unit, optionally a pack, converted to grams (mass), millilitres (volume) or a count.
  Bare "oz" is the avoirdupois ounce (mass); "fl oz" the US fluid ounce (volume). Numbers: "," followed by
  exactly three digits is a thousands separator, any other single "," a decimal comma; a single "." is a
  decimal point. Packs: "N x Q", "Q x N" (N a whole number without unit), "Q (pack of N)", "Q, N pack".
  Counts: "N count/ct/pack/pk/pcs/pieces", "pack of N", and the Chinese measure words 包 条 盒 袋 瓶 个 件
  支 片 粒.
- Amounts keep 6 significant digits; text prints them without exponent ("0.005 g").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

__all__ = ["UNITS", "Normalised", "normalize", "normalize_text", "parse_number", "parse_quantity"]

MAX_TEXT = 1024  # the schema's maxLength of normalized.text
_GRAMS_PER_OUNCE = 28.349523125  # avoirdupois ounce, exact by definition
_GRAMS_PER_POUND = 453.59237
_ML_PER_FLUID_OUNCE = 29.5735295625  # US customary fluid ounce

# unit spelling (lower case, dots after letters removed) -> (canonical unit, factor to it)
UNITS: dict[str, tuple[str, float]] = {
    **dict.fromkeys(("mcg", "µg", "μg", "ug", "microgram", "micrograms"), ("g", 1e-6)),
    **dict.fromkeys(("mg", "milligram", "milligrams"), ("g", 1e-3)),
    **dict.fromkeys(("g", "gm", "gms", "gram", "grams", "gramm", "克"), ("g", 1.0)),
    **dict.fromkeys(("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms", "千克", "公斤"), ("g", 1000.0)),
    "斤": ("g", 500.0),  # the market jin: 500 g in mainland China
    **dict.fromkeys(("oz", "ozs", "ounce", "ounces"), ("g", _GRAMS_PER_OUNCE)),
    **dict.fromkeys(("lb", "lbs", "pound", "pounds"), ("g", _GRAMS_PER_POUND)),
    **dict.fromkeys(
        ("ml", "mls", "milliliter", "milliliters", "millilitre", "millilitres", "毫升"), ("ml", 1.0)
    ),
    **dict.fromkeys(("cl", "centiliter", "centiliters", "centilitre", "centilitres"), ("ml", 10.0)),
    **dict.fromkeys(("l", "lt", "ltr", "liter", "liters", "litre", "litres", "升"), ("ml", 1000.0)),
    **dict.fromkeys(
        ("fl oz", "floz", "fl ounce", "fl ounces", "fluid oz", "fluid ounce", "fluid ounces"),
        ("ml", _ML_PER_FLUID_OUNCE),
    ),
    **dict.fromkeys(
        ("count", "counts", "ct", "cts", "pack", "packs", "pk", "pks", "pc", "pcs", "piece", "pieces"),
        ("count", 1.0),
    ),
    **dict.fromkeys(("包", "条", "盒", "袋", "瓶", "个", "件", "支", "片", "粒"), ("count", 1.0)),
}

_NUMBER = r"\d+(?:[.,]\d+)*|[.,]\d+|\d+ \d+/\d+|\d+/\d+"
_UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
# a Latin unit must not run on into a letter ("g" of "gal", "l" of "lemon"); a CJK one may be followed
_QUANTITY = rf"(?P<number>{_NUMBER}) ?(?P<unit>{_UNIT})(?![a-z])"
_PATTERNS = [
    (re.compile(rf"{_QUANTITY}"), None),
    (re.compile(rf"(?P<pack>\d+) ?[x×*] ?{_QUANTITY}"), None),
    (re.compile(rf"{_QUANTITY} ?[x×*] ?(?P<pack>\d+)"), None),
    (re.compile(rf"{_QUANTITY} ?[,(\-]? ?(?:pack|set|case) of (?P<pack>\d+)\)?"), None),
    (re.compile(rf"{_QUANTITY} ?[,(\-]? ?(?P<pack>\d+) ?(?:pack|pk|packs)\)?"), None),
    (re.compile(rf"(?:pack|set|case|box) of (?P<number>{_NUMBER})"), "count"),
]
_HYPHEN_AT_LETTER = re.compile(r"(?<=[^\W\d_])-(?=\w)|(?<=\w)-(?=[^\W\d_])")
_COMMA = re.compile(r"(?<!\d)\s*,\s*|\s*,\s*(?!\d)")  # not inside a number: "5,000" stays
_DOT_AFTER_LETTER = re.compile(r"(?<=[^\W\d_])\.")


@dataclass(frozen=True, slots=True)
class Normalised:
    """The normalised form of one value: ``text`` always; ``amount`` + ``unit`` ("g", "ml" or "count")
    for a quantity, per item when ``pack`` (the number of items) is set."""

    text: str
    amount: float | None = None
    unit: str | None = None
    pack: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``normalized`` object of listing-attributes v1 (keys without a value left out)."""
        out: dict[str, Any] = {"text": self.text}
        if self.amount is not None:
            out["amount"], out["unit"] = self.amount, self.unit
        if self.pack is not None:
            out["pack"] = self.pack
        return out


def normalize_text(value: str) -> str:
    """Case and spacing unified (see the module docstring)."""
    text = unicodedata.normalize("NFKC", value).casefold()
    text = _HYPHEN_AT_LETTER.sub(" ", text)
    text = re.sub(r"\s*/\s*", "/", text)
    text = _COMMA.sub(", ", text)
    # NFKC can lengthen a string (one ligature becomes up to 18 characters): keep within the schema's 1024
    return " ".join(text.split()).strip(", ")[:MAX_TEXT]


def parse_number(text: str) -> float:
    """ "1,000" -> 1000, "1,5" -> 1.5, "1.234,5" -> 1234.5, "1 1/2" -> 1.5 (rules in the module docstring)."""
    text = text.strip()
    if "/" in text:
        whole, _, fraction = text.rpartition(" ")
        numerator, denominator = fraction.split("/")
        return (float(whole) if whole else 0.0) + float(numerator) / float(denominator)
    separators = [c for c in text if c in ".,"]
    if not separators:
        return float(text)
    decimal = separators[-1]
    head, _, tail = text.rpartition(decimal)
    if len(separators) == 1 and decimal == "," and len(tail) == 3:  # "1,000": thousands
        return float(head + tail)
    if any(c == decimal for c in separators[:-1]):  # "1.000.000" or "1,000,000": thousands only
        return float(text.replace(decimal, ""))
    return float(head.replace("." if decimal == "," else ",", "") + "." + tail)


def _significant(value: float) -> float:
    return float(f"{value:.6g}")


def _plain(value: float) -> str:
    return format(Decimal(repr(value)).normalize(), "f")


def parse_quantity(value: str) -> Normalised | None:
    """The quantity the whole value states, converted, or None when it is not exactly one."""
    text = _DOT_AFTER_LETTER.sub("", normalize_text(value)).strip("() ")
    for pattern, fixed_unit in _PATTERNS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        groups = match.groupdict()
        try:
            number = parse_number(groups["number"])
        except (ValueError, ZeroDivisionError):
            return None
        unit, factor = (fixed_unit, 1.0) if fixed_unit else UNITS[groups["unit"]]
        amount = _significant(number * factor)
        pack = int(groups["pack"]) if groups.get("pack") else None
        if pack is not None and pack < 1:
            return None
        shown = f"{_plain(amount)} {unit}"
        return Normalised(f"{pack} x {shown}" if pack else shown, amount, unit, pack)
    return None


@lru_cache(maxsize=16384)
def normalize(value: str) -> Normalised:
    """The quantity when the value is one, else the unified text. Cached: on the worker's hot path the
    same few thousand values (brands, sizes, colours) repeat."""
    return parse_quantity(value) or Normalised(normalize_text(value))
