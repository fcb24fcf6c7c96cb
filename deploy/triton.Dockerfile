# Triton for the CPU model repository (triton_repo/cpu): the python-backend model runs model.onnx with
# ONNX Runtime, which the stock image's Python lacks. 24.10 ships Triton 2.51.0, the same server as the
# nvidia-pytriton 0.7.0 wheel used by the tests. Build: docker build -f deploy/triton.Dockerfile deploy
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "onnxruntime>=1.18,<2" "numpy>=1.26,<2"
