"""Ready-made models for the demo and the tests: find or train + export, with presets per base model."""

from __future__ import annotations

import json
from pathlib import Path

from training.config import TrainConfig

__all__ = ["build_tiny_model", "ensure_model", "find_exported_model", "next_version", "preset_config"]


def preset_config(base: str, data_path: Path, output_root: Path, name: str, version: str) -> TrainConfig:
    """Settings that work for each base: the tiny BERT learns from scratch and wants a high rate."""
    config = TrainConfig(
        data_path=str(data_path),
        output_root=str(output_root),
        name=name,
        version=version,
        base_model=base,
        progress=False,
    )
    if base == "tiny":
        return config.replace(
            epochs=6,
            patience=3,
            learning_rate=3e-3,
            head_learning_rate=3e-3,
            dev_fraction=0.2,
            save_checkpoints=False,
        )
    return config.replace(epochs=8, patience=3)


def find_exported_model(model_root: Path, name: str) -> Path | None:
    """The newest ``model_root/<name>/<version>`` that has been exported (model.onnx + label maps)."""
    candidates = []
    for onnx_path in Path(model_root).glob(f"{name}/*/model.onnx"):
        model_dir = onnx_path.parent
        if (model_dir / "labels.json").is_file() and (model_dir / "model_info.json").is_file():
            created = json.loads((model_dir / "model_info.json").read_text()).get("created_at", "")
            candidates.append((created, model_dir))
    return max(candidates)[1] if candidates else None


def next_version(model_root: Path, name: str) -> str:
    """``v<N+1>`` for the highest ``v<N>`` under ``model_root/name`` (v1 for the first). A name for people;
    the model's identity is its digest (`model_info.json` "digest", written by export)."""
    numbers = [int(p.name[1:]) for p in Path(model_root).glob(f"{name}/v*") if p.name[1:].isdigit()]
    return f"v{max(numbers, default=0) + 1}"


def ensure_model(model_root: Path, data_path: Path, base: str) -> Path:
    """An exported model directory for ``base`` ('tiny', 'minilm' or a path): reused if present, else
    trained on ``data_path`` and exported (the Triton repository is left to the caller)."""
    from training.export import export_model
    from training.train import train

    name = f"attribute-extractor-{Path(base).name}"
    existing = find_exported_model(model_root, name)
    if existing is not None:
        return existing
    model_dir = train(preset_config(base, data_path, model_root, name, next_version(model_root, name)))
    export_model(model_dir, cpu_repo=None)
    return model_dir


def build_tiny_model(out_dir: Path, data: Path, seed: int | None = None) -> Path:
    """Train the tiny BERT on ``data`` (seconds) and export it to ONNX; returns ``out_dir/tiny/v<N>``, the
    next free version (``seed`` makes another model from the same data)."""
    from training.export import export_model
    from training.train import train

    config = preset_config("tiny", data, Path(out_dir), "tiny", next_version(Path(out_dir), "tiny"))
    model_dir = train(config if seed is None else config.replace(seed=seed))
    export_model(model_dir, cpu_repo=None)
    return model_dir
