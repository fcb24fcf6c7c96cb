"""Where the dev tools find the checkout's files and keep their state: the one place that knows.

The dev tools run from a source checkout (they start services from `triton_repo/`, train into `models/`,
cache jars in `.cache/`); the worker package never needs any of these.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["CACHE_DIR", "FIXTURE_OFFERS", "MODELS_DIR", "REPO_ROOT", "TRITON_CPU_REPO"]

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"
MODELS_DIR = REPO_ROOT / "models"
TRITON_CPU_REPO = REPO_ROOT / "triton_repo" / "cpu"
# 300 synthetic offers (`python -m devtools.fixtures` regenerates them), package data of the harness kit.
FIXTURE_OFFERS = Path(str(resources.files("devtools.harness") / "offers.jsonl"))
