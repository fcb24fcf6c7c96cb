"""The GPU bench in one script (≤ 10 minutes): TensorRT FP16 plan → accuracy vs ONNX → perf_analyzer →
`enrich bench` → one results file.

    python -m devtools.bench.gpu.run [--model-dir models/<name>/<version>] [--out devtools/bench/results/gpu]

1. plan: `trtexec` when on PATH (triton_repo/gpu/build_plan.sh), else the TensorRT Python API (pip
   `tensorrt-cu12`), FP16, profiles covering batch 1..64 and every sequence bucket up to 64;
2. serve it: a local `tritonserver` with the TensorRT backend, or `$TRITON_IMAGE` through
   `docker --gpus all` (the pytriton wheel the CPU bench uses has only the python backend);
3. accuracy: micro-F1 of the dev split through Triton (the plan) and through ONNX Runtime (model.onnx),
   the worker's own encode → infer → decode steps (`training.evaluate.predict`); FP16 should cost < 0.005;
4. perf_analyzer at the worker's dominant shape [32,16] with 4 requests in flight;
5. `enrich bench --triton-url … --triton-model attribute_extractor_trt --measures abd` (the model-bound
   measures; cache hits and embedded-ORT scaling do not depend on the model server);
6. `gpu-results.json`: every figure above, the bench's results.json included.

Not run yet: no GPU machine was available when this was written. The CPU-side parts (the Triton runner
and the F1 comparison, the plan commands) are tested in tests/test_bench.py against the CPU Triton.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from devtools.paths import FIXTURE_OFFERS, REPO_ROOT

__all__ = ["accuracy_delta", "build_plan", "triton_runner", "trtexec_command"]

GPU_REPO = REPO_ROOT / "triton_repo" / "gpu"
TRT_MODEL = "attribute_extractor_trt"
SHAPES = {"min": (1, 16), "opt": (32, 16), "max": (64, 64)}  # opt: the worker's dominant batch shape


def trtexec_command(trtexec: str, onnx: Path, plan: Path) -> list[str]:
    def shape(kind: str) -> str:
        rows, seq = SHAPES[kind]
        return f"input_ids:{rows}x{seq},attention_mask:{rows}x{seq}"

    return [trtexec, f"--onnx={onnx}", f"--saveEngine={plan}", "--fp16", f"--minShapes={shape('min')}",
            f"--optShapes={shape('opt')}", f"--maxShapes={shape('max')}"]  # fmt: skip


def build_plan(onnx: Path, plan: Path) -> str:
    """Write the FP16 plan; returns how it was built."""
    plan.parent.mkdir(parents=True, exist_ok=True)
    trtexec = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    if Path(trtexec).is_file():
        subprocess.run(trtexec_command(trtexec, onnx, plan), check=True)
        return "trtexec"
    import tensorrt as trt  # pip install tensorrt-cu12 (GPU machine only)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name in ("input_ids", "attention_mask"):
        profile.set_shape(name, *(SHAPES[k] for k in ("min", "opt", "max")))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the plan")
    plan.write_bytes(bytes(serialized))
    return f"tensorrt {trt.__version__} Python API"


def triton_runner(url: str, model: str) -> Any:
    """A `training.evaluate` RunBatch through Triton's gRPC client: (input_ids, mask) → (tags, category)."""
    from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput

    client = InferenceServerClient(url)
    outputs = [InferRequestedOutput("tag_probs"), InferRequestedOutput("category_probs")]

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs = []
        for name, array in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            inputs.append(InferInput(name, list(array.shape), "INT64"))
            inputs[-1].set_data_from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        result = client.infer(model, inputs, outputs=outputs)
        return result.as_numpy("tag_probs"), result.as_numpy("category_probs")

    return run


def accuracy_delta(model_dir: Path, run_batch: Any, data_path: Path = FIXTURE_OFFERS) -> dict[str, Any]:
    """Micro-F1 and category accuracy on the model's dev split: ONNX Runtime vs `run_batch`."""
    from training.data import load_offers, split_offers
    from training.evaluate import onnx_runner, predict, score
    from workers.model.decode import ModelLabels
    from workers.model.encode import TitleEncoder

    config = json.loads((model_dir / "metrics.json").read_text())["config"]
    dev = split_offers(load_offers(data_path), config["dev_fraction"], config["split_salt"])[1]
    encoder, labels = TitleEncoder.from_model_dir(model_dir), ModelLabels.from_file(model_dir / "labels.json")
    texts = [offer.text for offer in dev]
    runners = {"onnx": onnx_runner(model_dir / "model.onnx"), "served": run_batch}
    scores = {name: score(dev, predict(texts, runner, encoder, labels, batch_size=32))
              for name, runner in runners.items()}  # fmt: skip
    f1 = {name: s["micro"]["f1"] for name, s in scores.items()}
    return {"dev_offers": len(dev), "f1_onnx": f1["onnx"], "f1_served": f1["served"],
            "f1_delta": round(f1["served"] - f1["onnx"], 6)}  # fmt: skip


def _serve(repo: Path, grpc_port: int, http_port: int, log: Path) -> subprocess.Popen[bytes]:
    if shutil.which("tritonserver"):
        argv = ["tritonserver", f"--model-repository={repo}", f"--grpc-port={grpc_port}",
                f"--http-port={http_port}", "--allow-metrics=false"]  # fmt: skip
    elif os.environ.get("TRITON_IMAGE"):
        argv = ["docker", "run", "--rm", "--gpus", "all", "-p", f"{grpc_port}:8001",
                "-p", f"{http_port}:8000", "-v", f"{repo}:/models:ro", os.environ["TRITON_IMAGE"],
                "tritonserver", "--model-repository=/models"]  # fmt: skip
    else:
        raise SystemExit("no tritonserver on PATH and no TRITON_IMAGE "
                         "(e.g. nvcr.io/nvidia/tritonserver:24.08-py3)")  # fmt: skip
    return subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_ready(url: str, timeout_s: float = 180) -> None:
    from tritonclient.grpc import InferenceServerClient

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if InferenceServerClient(url).is_model_ready(TRT_MODEL):
                return
        except Exception:  # not up yet: connection refused, unavailable
            pass
        time.sleep(1)
    raise SystemExit(f"{TRT_MODEL} not ready on {url} after {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    from devtools.bench.perf_analyzer import run_perf_analyzer
    from devtools.bench.run import BenchOptions, choose_model, vocab_size
    from devtools.services.ports import free_ports

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "devtools" / "bench" / "results" / "gpu")
    args = parser.parse_args(argv)
    model_dir = args.model_dir.resolve() if args.model_dir else choose_model(BenchOptions())[0]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"model_dir": str(model_dir), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    with tempfile.TemporaryDirectory(prefix="enrich-trt-") as work:
        repo = Path(work) / "repo"
        shutil.copytree(GPU_REPO, repo)
        print("[1/5] TensorRT FP16 plan ...", flush=True)
        results["plan"] = build_plan(model_dir / "model.onnx", repo / TRT_MODEL / "1" / "model.plan")
        grpc_port, http_port = free_ports(2)
        url = f"127.0.0.1:{grpc_port}"
        print(f"[2/5] tritonserver on {url} ...", flush=True)
        server = _serve(repo, grpc_port, http_port, args.out / "tritonserver.log")
        try:
            _wait_ready(url)
            print("[3/5] dev-split F1: plan vs ONNX ...", flush=True)
            results["accuracy"] = accuracy_delta(model_dir, triton_runner(url, TRT_MODEL))
            print("[4/5] perf_analyzer [32,16], 4 in flight ...", flush=True)
            results["perf_analyzer"] = run_perf_analyzer(
                url, TRT_MODEL, batch_size=32, seq_len=16, concurrency=4, vocab_size=vocab_size(model_dir),
                work_dir=args.out / "perf_analyzer").as_row()  # fmt: skip
            print("[5/5] enrich bench against the plan ...", flush=True)
            bench_out = args.out / "bench"
            subprocess.run([sys.executable, "-m", "workers.cli", "bench", "--model-dir", str(model_dir),
                            "--triton-url", url, "--triton-model", TRT_MODEL, "--measures", "abd",
                            "--out", str(bench_out)], check=True)  # fmt: skip
            results["bench"] = json.loads((bench_out / "results.json").read_text())
        finally:
            server.terminate()
            server.wait(timeout=30)
    (args.out / "gpu-results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("plan", "accuracy", "perf_analyzer")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
