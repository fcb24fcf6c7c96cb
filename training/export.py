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
from workers.model.identity import compute_digest
from workers.model.scripts import script_shares

__all__ = [
    "DEFAULT_TRITON_CPU_REPO",
    "export_model",
    "export_onnx",
    "fill_triton_repo",
    "parity_check",
    "record_digest",
    "record_training_scripts",
    "write_digest_parameters",
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


def _version_dirs(model_root: Path) -> dict[int, Path]:
    return {int(p.name): p for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()}


def _recorded_digest(version_dir: Path) -> str | None:
    info_path = version_dir / "model_info.json"
    if not (version_dir / "model.onnx").is_file() or not info_path.is_file():
        return None
    return json.loads(info_path.read_text()).get("digest")


def write_digest_parameters(model_root: Path) -> dict[int, str]:
    """Rewrite the `model_digest*` parameters of ``model_root/config.pbtxt`` from its version directories:
    `model_digest_v<N>` per exported version, `model_digest` for the newest (the one Triton's default
    version policy, latest 1, serves). Workers read them with `get_model_config` (workers/backends.py)."""
    digests = {n: d for n, path in sorted(_version_dirs(model_root).items()) if (d := _recorded_digest(path))}
    config_path = model_root / "config.pbtxt"
    kept = [line for line in config_path.read_text().splitlines() if '"model_digest' not in line]
    entries = [(f"model_digest_v{n}", digest) for n, digest in digests.items()]
    if digests:
        entries.append(("model_digest", digests[max(digests)]))
    lines = [f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in entries]
    config_path.write_text("\n".join([*kept, *lines]) + "\n")
    return digests


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
    """Copy the served files into a NEW numbered version directory ``<cpu_repo>/attribute_extractor/<N>/``
    (with the backend's model.py from version 1) and record the digests in config.pbtxt; returns it.

    N is the next free number; the template's empty ``1/`` (model.py only) is filled first. Exporting the
    model that is already the newest version again reuses that version (same digest: same model). An
    export never overwrites a version a worker may be calling.
    """
    model_root = cpu_repo / CPU_MODEL_NAME
    template = model_root / "1" / "model.py"
    if not template.is_file():
        raise FileNotFoundError(f"{template} missing: {cpu_repo} is not a copy of triton_repo/cpu")
    # A model directory exported before digests gets its digest now (the version copies model_info.json).
    digest = json.loads((model_dir / "model_info.json").read_text()).get("digest") or record_digest(model_dir)
    versions = _version_dirs(model_root)
    filled = {n: path for n, path in versions.items() if (path / "model.onnx").is_file()}
    if filled and _recorded_digest(filled[max(filled)]) == digest:
        version_dir = filled[max(filled)]
    else:
        version_dir = model_root / str(max(versions) + 1 if filled else 1)
        version_dir.mkdir(exist_ok=True)
        if version_dir != template.parent:
            shutil.copyfile(template, version_dir / "model.py")
        # model.onnx last: a version directory counts as exported only once its graph is there.
        for name in sorted(SERVED_FILES, key=lambda n: n == "model.onnx"):
            shutil.copyfile(model_dir / name, version_dir / name)
    write_digest_parameters(model_root)
    return version_dir


def record_digest(model_dir: Path) -> str:
    """Compute the model's digest (workers.model.identity) and write it into model_info.json."""
    digest = compute_digest(model_dir)
    info_path = model_dir / "model_info.json"
    info = json.loads(info_path.read_text())
    info["digest"] = digest
    info_path.write_text(json.dumps(info, indent=2))
    return digest


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
    report["training_scripts"] = record_training_scripts(model_dir)  # before the digest and the copy
    report["digest"] = record_digest(model_dir)
    if cpu_repo is not None:
        report["triton_cpu_model"] = str(fill_triton_repo(model_dir, Path(cpu_repo)))
    report["gpu_plan_command"] = f"triton_repo/gpu/build_plan.sh {onnx_path}  # on the GPU host (untested)"
    (model_dir / "export.json").write_text(json.dumps(report, indent=2))
    return report
