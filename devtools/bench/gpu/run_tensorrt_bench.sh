#!/usr/bin/env bash
# The same benchmark as `enrich bench`, with the model served as an FP16 TensorRT plan by a GPU Triton.
#
# UNTESTED: no NVIDIA GPU host was available when this was written (the CPU path it drives is tested by
# tests/test_bench.py). Run it from the repository root on the GPU host:
#
#   devtools/bench/gpu/run_tensorrt_bench.sh [models/<name>/<version>] [-- extra `enrich bench` flags]
#
# Steps: (1) copy triton_repo/gpu to a temp folder and build the plan there from the model's model.onnx
# with the model engineer's triton_repo/gpu/build_plan.sh (trtexec); (2) start tritonserver on that copy:
# a local `tritonserver` binary if there is one, else the image in $TRITON_IMAGE through docker --gpus all
# (then build inside that image too, so the plan matches its TensorRT); (3) wait until the model is ready;
# (4) run `enrich bench --triton-url ... --triton-model attribute_extractor_trt`, results in
# devtools/bench/results/gpu/. Kafka, Redis and the workers still run on the host CPUs, as in production.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"
model_dir=${1:-}
if [ -n "$model_dir" ] && [ "$model_dir" != "--" ]; then shift; else model_dir=""; fi
[ "${1:-}" = "--" ] && shift
if [ -z "$model_dir" ]; then  # newest exported model, MiniLM preferred (as `enrich bench --model auto`)
    model_dir=$(ls -td models/attribute-extractor-minilm/*/ 2>/dev/null | head -1 || true)
    [ -n "$model_dir" ] || model_dir=$(ls -td models/attribute-extractor-tiny/*/ 2>/dev/null | head -1 || true)
fi
[ -f "$model_dir/model.onnx" ] || { echo "no exported model.onnx in '$model_dir' (run enrich demo)" >&2; exit 2; }
model_dir=$(cd "$model_dir" && pwd)
enrich=${ENRICH:-$repo_root/.venv/bin/enrich}
work=$(mktemp -d /tmp/enrich-trt-XXXXXX)
cp -r triton_repo/gpu "$work/repo"
image=${TRITON_IMAGE:-}   # e.g. nvcr.io/nvidia/tritonserver:24.08-py3
grpc_port=${TRITON_GRPC_PORT:-18001}
http_port=${TRITON_HTTP_PORT:-18000}
server_pid=""
container=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    [ -n "$container" ] && docker rm -f "$container" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "[1/4] TensorRT plan from $model_dir/model.onnx"
if command -v tritonserver >/dev/null; then
    "$work/repo/build_plan.sh" "$model_dir/model.onnx"
elif [ -n "$image" ]; then
    docker run --rm --gpus all -v "$work/repo:/repo" -v "$model_dir:/model:ro" "$image" \
        /repo/build_plan.sh /model/model.onnx
else
    echo "neither tritonserver on PATH nor TRITON_IMAGE set" >&2; exit 2
fi

echo "[2/4] tritonserver (GPU) on gRPC :$grpc_port"
if command -v tritonserver >/dev/null; then
    tritonserver --model-repository="$work/repo" --grpc-port="$grpc_port" --http-port="$http_port" \
        --metrics-port=0 --allow-metrics=false > "$work/tritonserver.log" 2>&1 &
    server_pid=$!
else
    container=enrich-trt-$$
    docker run -d --name "$container" --gpus all -p "$grpc_port:8001" -p "$http_port:8000" \
        -v "$work/repo:/models:ro" "$image" tritonserver --model-repository=/models >/dev/null
fi

echo "[3/4] waiting for attribute_extractor_trt to be ready"
for _ in $(seq 1 120); do
    if curl -sf "http://127.0.0.1:$http_port/v2/models/attribute_extractor_trt/ready" >/dev/null; then break; fi
    sleep 1
done
curl -sf "http://127.0.0.1:$http_port/v2/models/attribute_extractor_trt/ready" >/dev/null \
    || { echo "Triton did not get ready; log: $work/tritonserver.log" >&2; exit 1; }

echo "[4/4] enrich bench against the GPU Triton"
ENRICH_MODEL_DIR="$model_dir" "$enrich" bench --model-dir "$model_dir" \
    --triton-url "127.0.0.1:$grpc_port" --triton-model attribute_extractor_trt \
    --out devtools/bench/results/gpu "$@"
