#!/usr/bin/env bash
# Build the FP16 TensorRT plan for a Triton model folder of triton_repo/gpu (attribute_extractor_trt, the
# served MiniLM, or attribute_extractor_teacher_trt, the mpnet teacher's GPU profile) from a model.onnx.
# Run on the GPU host, with the TensorRT version that matches its tritonserver (e.g. inside the
# nvcr.io/nvidia/tritonserver:<yy.mm>-py3 image, which ships trtexec). UNTESTED: no GPU host was available.
# Usage: triton_repo/gpu/build_plan.sh models/<name>/<version>/model.onnx [max_batch] [max_seq] [model]
set -euo pipefail
onnx=${1:?usage: build_plan.sh path/to/model.onnx [max_batch=64] [max_seq=64] [model=attribute_extractor_trt]}
max_batch=${2:-64}
max_seq=${3:-64}
model=${4:-attribute_extractor_trt}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -f "$here/$model/config.pbtxt" ] || { echo "no Triton model folder $here/$model (config.pbtxt)" >&2; exit 1; }
out="$here/$model/1/model.plan"
trtexec=$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)
[ -x "$trtexec" ] || { echo "trtexec not found: run this on the GPU host with TensorRT installed" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# Shapes cover every batch size up to max_batch and every sequence bucket up to max_seq (16/32/64).
"$trtexec" --onnx="$onnx" --saveEngine="$out" --fp16 \
    --minShapes=input_ids:1x16,attention_mask:1x16 \
    --optShapes=input_ids:$((max_batch / 2))x32,attention_mask:$((max_batch / 2))x32 \
    --maxShapes=input_ids:${max_batch}x${max_seq},attention_mask:${max_batch}x${max_seq}
echo "wrote $out"
