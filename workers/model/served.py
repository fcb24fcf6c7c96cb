"""The served-model contract: what the worker and training read from an exported model directory.

A model directory holds `model_info.json` (name, version), `labels.json` (tag and category maps) and
`tokenizer.json`; `model.onnx` next to them is the backend's business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder

__all__ = ["ServedModel"]


@dataclass(frozen=True)
class ServedModel:
    """What the worker needs of a model directory: identity, tokenizer and label maps."""

    name: str
    version: str
    labels: ModelLabels
    encoder: TitleEncoder

    @classmethod
    def load(cls, model_dir: Path) -> ServedModel:
        info = json.loads((model_dir / "model_info.json").read_text(encoding="utf-8"))
        return cls(
            str(info["name"]),
            str(info["version"]),
            ModelLabels.from_file(model_dir / "labels.json"),
            TitleEncoder.from_model_dir(model_dir),
        )
