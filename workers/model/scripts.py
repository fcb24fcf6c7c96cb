"""Unicode scripts of a title's letters, and where a "word" ends, for CJK titles as much as Latin ones.

Python's ``unicodedata`` has no Script property, so a letter's script is read from its character name
(``LATIN SMALL LETTER A``, ``CJK UNIFIED IDEOGRAPH-4E09``, ``HIRAGANA LETTER A``, ``HANGUL SYLLABLE GA``)
after NFKC folding, which turns full-width Latin (``Ｂ``) into Latin and half-width katakana into
katakana. Digits, punctuation and symbols belong to no script and are not counted.

Word boundaries follow the BERT pre-tokenizer that every served tokenizer here uses: a Han ideograph is a
word of its own (Chinese has no spaces; "伊利纯牛奶" is five one-character words), every other run of
letters and digits is one word.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["is_han", "joins_word", "letter_scripts", "script_of", "script_shares", "seen_share"]

# First word of a character name -> script name (Unicode's Script values); other first words are used
# title-cased ("GEORGIAN" -> "Georgian"), which is the script name for almost every other alphabet.
_NAME_TO_SCRIPT = {
    "CJK": "Han",
    "KATAKANA-HIRAGANA": "Katakana",  # the prolonged sound mark ー, written inside katakana words
    "HALFWIDTH": "Katakana",
    "NKO": "Nko",
}

_ASCII_LETTERS = string.ascii_letters.encode()
_NON_ASCII = re.compile(r"[^\x00-\x7f]")

# BERT's _is_chinese_char ranges: the CJK Unified Ideographs blocks (+ extensions) and compatibility
# ideographs. These are the characters its pre-tokenizer splits into one-character words.
_HAN_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip


def is_han(char: str) -> bool:
    """True for a CJK ideograph (a word of its own to the BERT pre-tokenizer)."""
    code = ord(char)
    return any(low <= code <= high for low, high in _HAN_RANGES)


def joins_word(left: str, right: str) -> bool:
    """True when two adjacent characters belong to one word: both alphanumeric and neither a Han ideograph.

    ``str.isalnum`` alone treats a whole unspaced Chinese title as one word, so widening a span to whole
    words turned the brand "伊利" of "伊利纯牛奶250毫升" into the entire title.
    """
    return left.isalnum() and right.isalnum() and not is_han(left) and not is_han(right)


@lru_cache(maxsize=16384)
def script_of(char: str) -> str | None:
    """The script of a letter ("Latin", "Han", "Hiragana", "Katakana", "Hangul", "Cyrillic", ...); None
    for anything that is not a letter (digits, punctuation, symbols, spaces)."""
    if not unicodedata.category(char).startswith("L"):
        return None
    folded = unicodedata.normalize("NFKC", char)
    letter = folded[0] if folded and unicodedata.category(folded[0]).startswith("L") else char
    name = unicodedata.name(letter, "")
    if not name:
        return "Unknown"
    first = name.split(" ", 1)[0]
    return _NAME_TO_SCRIPT.get(first, first.title())


def letter_scripts(text: str) -> Counter[str]:
    """How many letters of each script ``text`` has.

    ASCII letters are counted in C (encode, then bytes.translate); only the other characters go through
    :func:`script_of`: a Python loop over every character cost ~45 us for an English title with one "é".
    """
    ascii_part = text.encode("ascii", "ignore")
    latin = len(ascii_part) - len(ascii_part.translate(None, _ASCII_LETTERS))
    counts: Counter[str] = Counter({"Latin": latin} if latin else {})
    if len(ascii_part) < len(text):
        for char in _NON_ASCII.findall(text):
            script = script_of(char)
            if script is not None:
                counts[script] += 1
    return counts


def script_shares(texts: Iterable[str], digits: int = 4) -> dict[str, float]:
    """Each script's share of all letters in ``texts`` (largest first), rounded to ``digits``."""
    total: Counter[str] = Counter()
    for text in texts:
        total.update(letter_scripts(text))
    letters = sum(total.values())
    if not letters:
        return {}
    return {script: round(count / letters, digits) for script, count in total.most_common()}


def seen_share(text: str, seen: frozenset[str]) -> float:
    """The share of ``text``'s letters whose script is in ``seen``; 1.0 for a title without letters."""
    if text.isascii() and "Latin" in seen:
        return 1.0
    counts = letter_scripts(text)
    letters = sum(counts.values())
    if not letters:
        return 1.0
    return sum(count for script, count in counts.items() if script in seen) / letters
