"""The served-model contract: what the worker and training read from an exported model directory.

A model directory holds `model_info.json` (name, version), `labels.json` (tag and category maps) and
`tokenizer.json`; `model.onnx` next to them is the backend's business.

`rank` orders models for the stale-update guard (`workers.stages.guard`): a result of a higher-ranked
model replaces a lower-ranked one's for the same listing_version. It is the model's creation time
(`model_info.json` "created_at", written by training) in epoch milliseconds, 0 when absent. The digest
(model identity) cannot order models; a rollout sequence from the control topic could replace this here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from workers.contract.errors import ConfigError
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder

__all__ = ["ServedModel", "model_rank"]


@dataclass(frozen=True)
class ServedModel:
    """What the worker needs of a model directory: identity, tokenizer and label maps."""

    name: str
    version: str
    labels: ModelLabels
    encoder: TitleEncoder
    rank: int = 0

    @classmethod
    def load(cls, model_dir: Path) -> ServedModel:
        info = json.loads((model_dir / "model_info.json").read_text(encoding="utf-8"))
        return cls(
            str(info["name"]),
            str(info["version"]),
            ModelLabels.from_file(model_dir / "labels.json"),
            TitleEncoder.from_model_dir(model_dir),
            rank=model_rank(info),
        )


def model_rank(info: dict[str, object]) -> int:
    """`created_at` of a model_info.json as epoch milliseconds (naive times read as UTC); 0 when absent."""
    created = info.get("created_at")
    if not isinstance(created, str) or not created:
        return 0
    try:
        moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"model_info.json: created_at {created!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int(moment.timestamp() * 1000))
