"""Raw backend throughput, without the worker around it: Triton over gRPC and ONNX Runtime in-process.

Both measure rows/s at one batch shape [batch_size, seq_len] for a fixed wall-clock duration after a
warm-up, with ``in_flight`` requests (Triton) or ``concurrency`` threads (ORT) kept busy at once. These are
the ceilings the full pipeline's throughput is compared against.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BackendThroughput", "make_batch", "measure_ort_throughput", "measure_triton_throughput"]

OUTPUT_NAMES = ("tag_probs", "category_probs")


@dataclass(frozen=True)
class BackendThroughput:
    backend: str
    batch_size: int
    seq_len: int
    concurrency: int  # requests in flight (Triton) or threads (ORT)
    duration_s: float
    requests: int
    rows_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def make_batch(
    batch_size: int, seq_len: int, *, vocab_size: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids (above the usual special-token ids) and a full attention mask: the worst case."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(min(5, vocab_size - 1), vocab_size, size=(batch_size, seq_len), dtype=np.int64)
    return input_ids, np.ones_like(input_ids)


def _summarise(
    backend: str, input_ids: np.ndarray, concurrency: int, elapsed_s: float, latencies_s: list[float]
) -> BackendThroughput:
    batch_size, seq_len = input_ids.shape
    ordered = sorted(latencies_s)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")
    return BackendThroughput(
        backend=backend,
        batch_size=batch_size,
        seq_len=seq_len,
        concurrency=concurrency,
        duration_s=round(elapsed_s, 3),
        requests=len(latencies_s),
        rows_per_s=len(latencies_s) * batch_size / elapsed_s if elapsed_s > 0 else 0.0,
        latency_p50_ms=statistics.median(ordered) * 1000 if ordered else float("nan"),
        latency_p95_ms=p95 * 1000,
    )


async def _triton_run(
    url: str,
    model_name: str,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    in_flight: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
) -> BackendThroughput:
    from tritonclient.grpc import InferInput, InferRequestedOutput
    from tritonclient.grpc.aio import InferenceServerClient

    inputs = []
    for name, array in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        tensor = InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [InferRequestedOutput(name) for name in OUTPUT_NAMES]
    latencies: list[float] = []

    async with InferenceServerClient(url) as client:

        async def one_request() -> float:
            started = time.perf_counter()
            result = await client.infer(model_name, inputs, outputs=outputs, client_timeout=timeout_s)
            result.as_numpy("tag_probs")  # decode like the worker does, so the copy is part of the cost
            result.as_numpy("category_probs")
            return time.perf_counter() - started

        async def loop(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                latency = await one_request()
                if record:
                    latencies.append(latency)

        warm_until = time.perf_counter() + warmup_s
        await asyncio.gather(*(loop(warm_until, record=False) for _ in range(in_flight)))
        started = time.perf_counter()
        await asyncio.gather(*(loop(started + duration_s, record=True) for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    return _summarise("triton", input_ids, in_flight, elapsed, latencies)


def measure_triton_throughput(
    url: str,
    model_name: str = "attribute_extractor",
    *,
    batch_size: int,
    seq_len: int,
    in_flight: int,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    timeout_s: float = 60.0,
    vocab_size: int = 100,
) -> BackendThroughput:
    """Rows/s that Triton at ``url`` (gRPC host:port) sustains with ``in_flight`` requests outstanding."""
    input_ids, attention_mask = make_batch(batch_size, seq_len, vocab_size=vocab_size)
    return asyncio.run(
        _triton_run(url, model_name, input_ids, attention_mask, in_flight, duration_s, warmup_s, timeout_s)
    )


def measure_ort_throughput(
    onnx_path: Path,
    *,
    batch_size: int,
    seq_len: int,
    intra_op_threads: int = 1,
    concurrency: int = 1,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    vocab_size: int = 100,
) -> BackendThroughput:
    """Rows/s of one in-process ONNX Runtime session run from ``concurrency`` threads at once."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    input_ids, attention_mask = make_batch(batch_size, seq_len, vocab_size=vocab_size)
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    latencies: list[float] = []
    lock = threading.Lock()

    def loop(until: float, record: bool) -> None:
        while time.perf_counter() < until:
            started = time.perf_counter()
            session.run(list(OUTPUT_NAMES), feeds)
            if record:
                with lock:
                    latencies.append(time.perf_counter() - started)

    def run_threads(until: float, record: bool) -> None:
        threads = [threading.Thread(target=loop, args=(until, record)) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    run_threads(time.perf_counter() + warmup_s, record=False)
    started = time.perf_counter()
    run_threads(started + duration_s, record=True)
    elapsed = time.perf_counter() - started
    label = f"onnxruntime(intra_op={intra_op_threads})"
    return _summarise(label, input_ids, concurrency, elapsed, latencies)


def main(argv: list[str] | None = None) -> None:
    """JSON lines: ``python -m devtools.bench.backends --onnx models/x/1/model.onnx --triton-url H:P``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="model.onnx to run in-process")
    parser.add_argument("--triton-url", help="Triton gRPC host:port")
    parser.add_argument("--model-name", default="attribute_extractor")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--in-flight", default="1,4", help="comma-separated Triton requests in flight")
    parser.add_argument("--ort-threads", type=int, default=1, help="ORT sessions' intra-op threads")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--vocab-size", type=int, default=100)
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for batch_size in batch_sizes:
        if args.onnx is not None:
            row = measure_ort_throughput(
                args.onnx,
                batch_size=batch_size,
                seq_len=args.seq_len,
                intra_op_threads=args.ort_threads,
                duration_s=args.duration_s,
                vocab_size=args.vocab_size,
            )
            print(json.dumps(row.as_row()), flush=True)
        if args.triton_url:
            for in_flight in (int(n) for n in args.in_flight.split(",")):
                row = measure_triton_throughput(
                    args.triton_url,
                    args.model_name,
                    batch_size=batch_size,
                    seq_len=args.seq_len,
                    in_flight=in_flight,
                    duration_s=args.duration_s,
                    vocab_size=args.vocab_size,
                )
                print(json.dumps(row.as_row()), flush=True)


if __name__ == "__main__":
    main()
