"""The served-model contract: what the worker and training read from an exported model directory.

A model directory holds `model_info.json` (name, version, the scripts of its training titles),
`labels.json` (tag and category maps) and `tokenizer.json`; `model.onnx` next to them is the backend's
business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.model.coverage import CoverageCheck
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder

__all__ = ["ServedModel"]


@dataclass(frozen=True)
class ServedModel:
    """What the worker needs of a model directory: identity, tokenizer, label maps, and the coverage check
    (scripts seen in training, the unknown token) that caps confidences on titles it cannot read."""

    name: str
    version: str
    labels: ModelLabels
    encoder: TitleEncoder
    coverage: CoverageCheck | None = None

    @classmethod
    def load(cls, model_dir: Path) -> ServedModel:
        info = json.loads((model_dir / "model_info.json").read_text(encoding="utf-8"))
        encoder = TitleEncoder.from_model_dir(model_dir)
        return cls(
            str(info["name"]),
            str(info["version"]),
            ModelLabels.from_file(model_dir / "labels.json"),
            encoder,
            CoverageCheck.from_model_info(info, encoder.unk_id),
        )
