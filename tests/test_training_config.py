"""Training configuration: defaults < JSON file < command-line flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from training.config import TrainConfig, add_config_arguments, config_from_args


def parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_file_then_flags_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 3, "base_model": "tiny", "augment": True, "seq_buckets": [8, 16]}))
    config = parse(["--config", str(path), "--epochs", "5", "--no-augment", "--learning-rate", "0.01"])
    assert (config.epochs, config.base_model, config.augment, config.learning_rate) == (
        5,
        "tiny",
        False,
        0.01,
    )
    assert config.seq_buckets == [8, 16] and config.batch_size == TrainConfig().batch_size


def test_unknown_options_in_the_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_json(path)
