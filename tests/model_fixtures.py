"""Session fixtures for the tiny test model (tiny BERT trained on the fixture offers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.fixtures import DEFAULT_FIXTURE_PATH

__all__ = ["FIXTURE_OFFERS", "other_tiny_model_dir", "tiny_model_dir", "tiny_triton_repo"]

FIXTURE_OFFERS = DEFAULT_FIXTURE_PATH


def enrich(*args: str, timeout: float = 600) -> str:
    """Run an `enrich` subcommand in a subprocess (offline, as a user would); its stdout."""
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (contract layout, model.onnx included) of a tiny BERT trained for seconds on the
    fixture offers; read-only for tests."""
    from training.build import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), FIXTURE_OFFERS)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (another seed) with the same name and version as `tiny_model_dir` ("tiny", "v1"):
    only the digest tells the two apart."""
    from training.build import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("other-tiny-model"), FIXTURE_OFFERS, seed=29)


@pytest.fixture(scope="session")
def tiny_triton_repo(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of triton_repo/cpu with the tiny model's model.onnx, labels.json, model_info.json in place."""
    from devtools.harness.stack import prepare_triton_repo

    return prepare_triton_repo(tiny_model_dir, tmp_path_factory.mktemp("triton-repo") / "cpu")
