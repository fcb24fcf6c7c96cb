# A versioned model image for Kubernetes (deploy/k8s): init containers copy its files into emptyDirs, so
# the model reaches the workers and Triton on any storage class (no ReadOnlyMany volume to fill), and a
# rollout names its model in the image tag. /model: what the worker reads (tokenizer, label maps, model
# info; model.onnx too, for ENRICH_BACKEND=onnx). /triton: Triton's model repository (the TensorRT plan,
# built on the GPU type it will run on with triton_repo/gpu/build_plan.sh).
# Build from the repository root, after `enrich export models/<name>/<version>` and build_plan.sh:
#   docker build -f deploy/model.Dockerfile --build-arg MODEL_DIR=models/<name>/<version> \
#     -t registry.example.com/listing-enrichment/model:<name>-<version> .
FROM busybox:1.36
ARG MODEL_DIR
COPY ${MODEL_DIR}/model_info.json ${MODEL_DIR}/labels.json ${MODEL_DIR}/tokenizer.json ${MODEL_DIR}/model.onnx /model/
COPY triton_repo/gpu/attribute_extractor_trt /triton/attribute_extractor_trt
USER 10001
