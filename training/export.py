"""`enrich export`: model directory -> model.onnx (parity-checked against torch) -> Triton repositories.

The exported ``model_info.json`` carries ``training_scripts`` (each script's share of the training titles'
letters), which the worker uses to cap confidences on titles in scripts the model never read.

ONNX contract: inputs input_ids/attention_mask int64 [B,S], outputs tag_probs float32 [B,S,T] and
category_probs float32 [B,C], batch and sequence dynamic, opset >= 17.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data import load_offers, split_offers
from training.model import ProbabilityOutputs, load_model
from workers.model.encode import TitleEncoder
from workers.model.scripts import script_shares

__all__ = [
    "DEFAULT_TRITON_CPU_REPO",
    "export_model",
    "export_onnx",
    "fill_triton_repo",
    "parity_check",
    "record_training_scripts",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRITON_CPU_REPO = REPO_ROOT / "triton_repo" / "cpu"
CPU_MODEL_NAME = "attribute_extractor"
SERVED_FILES = ("model.onnx", "labels.json", "model_info.json")
PARITY_TOLERANCE = 1e-4
PARITY_TEXTS = (
    "Crocs Women's Jayna Ballet Flat,Nautical Navy,4 M US",
    "Café Bustelo Espresso Roast Ground Coffee, 10 oz — Nescafé style 😀",
    "NOW Supplements, Vitamin B-100, Sustained Release, Energy Production*, Nervous System Health*, "
    "100 Tablets, Women's and Men's, 100 Tablets, extra words to reach a longer bucket of tokens here",
)


def export_onnx(model_dir: Path, opset: int = 17) -> Path:
    """Write ``model_dir/model.onnx`` with dynamic batch and sequence axes."""
    if opset < 17:
        raise ValueError("opset must be >= 17")
    wrapper = ProbabilityOutputs(load_model(model_dir)).eval()
    example = torch.ones((2, 16), dtype=torch.long)
    onnx_path = model_dir / "model.onnx"
    dynamic = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "tag_probs": {0: "batch", 1: "sequence"},
        "category_probs": {0: "batch"},
    }
    # The TorchScript exporter: a plain static graph in well under a second for BERT (the dynamo exporter
    # takes ~10 s for the same graph and gives the same outputs).
    torch.onnx.export(
        wrapper,
        (example, example),
        str(onnx_path),
        input_names=["input_ids", "attention_mask"],
        output_names=["tag_probs", "category_probs"],
        dynamic_axes=dynamic,
        opset_version=opset,
        dynamo=False,
    )
    return onnx_path


def parity_check(model_dir: Path, onnx_path: Path) -> float:
    """Max absolute difference between torch and ONNX Runtime outputs on real titles, every bucket."""
    import onnxruntime

    model = ProbabilityOutputs(load_model(model_dir)).eval()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    encoder = TitleEncoder.from_model_dir(model_dir)
    worst = 0.0
    for count in range(1, len(PARITY_TEXTS) + 1):
        input_ids, attention_mask = encoder.pad_to_bucket(encoder.encode(PARITY_TEXTS[:count]))
        onnx_out = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        with torch.inference_mode():
            torch_out = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        for ours, theirs in zip(onnx_out, torch_out, strict=True):
            worst = max(worst, float(np.abs(ours - theirs.numpy()).max()))
    return worst


def record_training_scripts(model_dir: Path) -> dict[str, float] | None:
    """``training_scripts`` of ``model_info.json``: as `enrich train` wrote it, or, for a model trained
    before it was recorded, computed from the training side of the file and split named in metrics.json.
    None when neither is there (the worker then does not judge scripts)."""
    info_path = model_dir / "model_info.json"
    info = json.loads(info_path.read_text())
    if info.get("training_scripts"):
        return dict(info["training_scripts"])
    metrics_path = model_dir / "metrics.json"
    config = json.loads(metrics_path.read_text()).get("config", {}) if metrics_path.is_file() else {}
    data_path = Path(config.get("data_path") or "")
    if not data_path.is_file():
        return None
    train_offers, _ = split_offers(load_offers(data_path), config["dev_fraction"], config["split_salt"])
    info["training_scripts"] = script_shares(offer.text for offer in train_offers)
    info_path.write_text(json.dumps(info, indent=2))
    return dict(info["training_scripts"])


def fill_triton_repo(model_dir: Path, cpu_repo: Path = DEFAULT_TRITON_CPU_REPO) -> Path:
    """Copy the served files into ``<cpu_repo>/attribute_extractor/1/`` (next to the backend's model.py)."""
    version_dir = cpu_repo / CPU_MODEL_NAME / "1"
    if not (version_dir / "model.py").is_file():
        raise FileNotFoundError(
            f"{version_dir}/model.py missing: {cpu_repo} is not a copy of triton_repo/cpu"
        )
    for name in SERVED_FILES:
        shutil.copyfile(model_dir / name, version_dir / name)
    return version_dir


def export_model(
    model_dir: Path, cpu_repo: Path | None = DEFAULT_TRITON_CPU_REPO, opset: int = 17
) -> dict[str, Any]:
    """ONNX export + parity check (raises above tolerance) + Triton CPU repository; returns a report."""
    model_dir = Path(model_dir)
    torch.set_num_threads(2)
    onnx_path = export_onnx(model_dir, opset)
    difference = parity_check(model_dir, onnx_path)
    report: dict[str, Any] = {
        "onnx": str(onnx_path),
        "opset": opset,
        "onnx_bytes": onnx_path.stat().st_size,
        "parity_max_abs_diff": difference,
    }
    if difference > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX parity check failed: max abs diff {difference:.3g} > {PARITY_TOLERANCE}")
    report["training_scripts"] = record_training_scripts(model_dir)  # before model_info.json is copied
    if cpu_repo is not None:
        report["triton_cpu_model"] = str(fill_triton_repo(model_dir, Path(cpu_repo)))
    report["gpu_plan_command"] = f"triton_repo/gpu/build_plan.sh {onnx_path}  # on the GPU host (untested)"
    (model_dir / "export.json").write_text(json.dumps(report, indent=2))
    return report
