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

__all__ = ["fixture_offers", "fixture_titles"]


def fixture_offers(path: Path = FIXTURE_OFFERS) -> list[dict[str, Any]]:
    """Every offer of the fixture file (one JSON object a line), in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def fixture_titles(*, distinct: bool, path: Path = FIXTURE_OFFERS) -> list[str]:
    """The offers' titles in file order: each once with `distinct`, else one per offer line."""
    titles = [offer["input"] for offer in fixture_offers(path)]
    return list(dict.fromkeys(titles)) if distinct else titles
