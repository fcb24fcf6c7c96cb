"""The fixture offers' titles: what every harness listing is titled with.

One loader, because the callers want the titles two ways: the bench cycles through the *distinct* titles
(its cache-warm pass produces each title once, so duplicates would skew the hit fraction), while the
demo and the reliability suite draw at random from *every* offer line (the seeded draws, and so the
figures, depend on the full list). `distinct` is required so each caller states which it relies on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devtools.paths import FIXTURE_OFFERS

__all__ = ["distinct_titles", "fixture_offers", "fixture_titles", "lot_title"]


def fixture_offers(path: Path = FIXTURE_OFFERS) -> list[dict[str, Any]]:
    """Every offer of the fixture file (one JSON object a line), in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def fixture_titles(*, distinct: bool, path: Path = FIXTURE_OFFERS) -> list[str]:
    """The offers' titles in file order: each once with `distinct`, else one per offer line."""
    titles = [offer["input"] for offer in fixture_offers(path)]
    return list(dict.fromkeys(titles)) if distinct else titles


def lot_title(title: str, index: int) -> str:
    """`title` made unique by its index: no two share a cache entry (the key hashes the exact title)."""
    return f"{title} lot {index}"


def distinct_titles(count: int, *, path: Path = FIXTURE_OFFERS) -> list[str]:
    """`count` different titles: the distinct fixture titles in turn, each made unique with `lot_title`
    (the bench's all-distinct cache-hit pass: every lookup carries a different key)."""
    base = fixture_titles(distinct=True, path=path)
    return [lot_title(base[i % len(base)], i) for i in range(count)]
