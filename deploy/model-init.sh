#!/usr/bin/env bash
# The model step of docker-compose.yml (service model-init, tools image): on a fresh clone, trains the
# tiny test model on the packaged fixture offers (seconds on a CPU), exports it to ONNX and puts it where
# the other services mount it: models/current/ (the worker's ENRICH_MODEL_DIR) and the Triton CPU
# repository triton_repo/cpu/attribute_extractor/1/. Does nothing when MODEL_DIR is set (you bring an
# exported model, and ran `enrich export` for Triton) or when both are already there.
# MODELS and TRITON_REPO (the container paths) may be overridden; tests/test_compose.py runs this script.
set -euo pipefail
models=${MODELS:-/work/models}
repo=${TRITON_REPO:-/work/triton_repo/cpu}
if [ -n "${MODEL_DIR:-}" ]; then
    echo "model-init: MODEL_DIR=$MODEL_DIR is set, nothing to do"
    exit 0
fi
if [ -f "$models/current/model_info.json" ] && [ -f "$repo/attribute_extractor/1/model.onnx" ]; then
    echo "model-init: $models/current and the Triton repository already hold a model"
    exit 0
fi
python - "$models" "$repo" <<'PY'
import shutil
import sys
import tempfile
from pathlib import Path

from devtools.paths import FIXTURE_OFFERS
from training.build import build_tiny_model
from training.export import fill_triton_repo

models, repo = Path(sys.argv[1]), Path(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    model_dir = build_tiny_model(Path(tmp), FIXTURE_OFFERS)
    fill_triton_repo(model_dir, repo)
    target = models / "current"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("*.safetensors", "checkpoints"))
print(f"model-init: trained the tiny model into {target} and {repo}")
PY
