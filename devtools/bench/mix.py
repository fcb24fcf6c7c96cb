"""The worker's batch mix, and its matched replay against the raw backends (issue 13).

The worker counts every inference call by shape (`enrich_inference_batches_total{rows, seq}` on
/metrics). A replay sends exactly that multiset of [rows, seq] batches to the raw backend — Triton with
the worker's number of requests in flight, ONNX Runtime with the worker's threads and intra-op threads —
so the raw time is the time of the same model work without the pipeline around it, and
efficiency = worker events/s ÷ (events / replay seconds) cannot exceed 1 except by noise. The replay is
run `repeats` times and the fastest kept (a ceiling is the best the backend does), after one warm-up
request per shape. The earlier baseline, one fixed shape at the sequence length of 32 titles padded in
arrival order, was not the work the worker did: it sends most batches at its 16-token bucket, which is
why its "efficiency" read 1.47–1.52.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devtools.bench.backends import OUTPUT_NAMES, make_batch

__all__ = ["MixReplay", "dominant_shape", "mix_from_labels", "mix_from_metrics", "mix_labels", "replay_ort",
           "replay_triton", "scrape_mix"]

Shape = tuple[int, int]  # (rows, seq): one inference call's padded input
BATCH_METRIC = "enrich_inference_batches"


def mix_from_metrics(text: str) -> Counter[Shape]:
    """The (rows, seq) → calls counts in one Prometheus exposition of a worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    mix: Counter[Shape] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != BATCH_METRIC:
            continue
        for sample in family.samples:
            if sample.name == BATCH_METRIC + "_total" and sample.value:
                mix[(int(sample.labels["rows"]), int(sample.labels["seq"]))] += int(sample.value)
    return mix


def mix_labels(mix: Counter[Shape]) -> dict[str, int]:
    """The mix as JSON-friendly labels: {"32x16": calls}."""
    return {f"{rows}x{seq}": count for (rows, seq), count in sorted(mix.items())}


def mix_from_labels(labels: dict[str, int]) -> Counter[Shape]:
    return Counter({(int(r), int(q)): n for key, n in labels.items() for r, q in [key.split("x")]})


def scrape_mix(urls: list[str], timeout_s: float = 5.0) -> Counter[Shape]:
    """The summed batch mix of the workers serving /metrics at `urls` (http://host:port)."""
    total: Counter[Shape] = Counter()
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout_s) as reply:
            total.update(mix_from_metrics(reply.read().decode()))
    return total


def dominant_shape(mix: Counter[Shape]) -> Shape:
    """The shape that carried the most rows."""
    return max(mix, key=lambda shape: (shape[0] * mix[shape], shape))


@dataclass(frozen=True)
class MixReplay:
    backend: str
    concurrency: int  # requests in flight (Triton) or threads calling the session (ORT)
    intra_op_threads: int  # per model instance (Triton: the instance's; ORT: the session's)
    requests: int
    rows: int
    seconds: float  # the fastest of the repeats

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def events_per_s(self, events: int) -> float:
        """The rate at which these calls would finish a pass of `events` (rows < events when a batch
        held the same title twice: the worker infers it once)."""
        return events / self.seconds if self.seconds > 0 else 0.0

    def as_row(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}


def _schedule(mix: Counter[Shape], seed: int = 0) -> list[Shape]:
    """Every call of the mix once, in a fixed shuffled order (the worker interleaves its buckets too)."""
    calls = [shape for shape, count in sorted(mix.items()) for _ in range(count)]
    random.Random(seed).shuffle(calls)
    return calls


def _inputs(mix: Counter[Shape], vocab_size: int) -> dict[Shape, tuple[np.ndarray, np.ndarray]]:
    return {shape: make_batch(*shape, vocab_size=vocab_size, seed=i) for i, shape in enumerate(sorted(mix))}


async def _triton_replay(url: str, model: str, mix: Counter[Shape], in_flight: int, vocab_size: int,
                         repeats: int, timeout_s: float) -> float:  # fmt: skip
    from tritonclient.grpc import InferInput, InferRequestedOutput
    from tritonclient.grpc.aio import InferenceServerClient

    requests = {}
    for shape, arrays in _inputs(mix, vocab_size).items():
        tensors = []
        for name, array in zip(("input_ids", "attention_mask"), arrays, strict=True):
            tensors.append(InferInput(name, list(array.shape), "INT64"))
            tensors[-1].set_data_from_numpy(array)
        requests[shape] = tensors
    outputs = [InferRequestedOutput(name) for name in OUTPUT_NAMES]
    async with InferenceServerClient(url) as client:

        async def run(calls: list[Shape]) -> float:
            pending = iter(calls)

            async def lane() -> None:
                for shape in pending:  # the lanes share one iterator: `in_flight` calls outstanding
                    result = await client.infer(model, requests[shape], outputs=outputs,
                                                client_timeout=timeout_s)  # fmt: skip
                    for name in OUTPUT_NAMES:  # decode like the worker does
                        result.as_numpy(name)

            started = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(in_flight)))
            return time.perf_counter() - started

        await run(sorted(mix))  # warm-up: one call per shape
        return min([await run(_schedule(mix, seed)) for seed in range(repeats)])


def replay_triton(url: str, model: str, mix: Counter[Shape], *, in_flight: int, intra_op_threads: int,
                  vocab_size: int, repeats: int = 2, timeout_s: float = 120.0) -> MixReplay:  # fmt: skip
    """The mix against Triton at `url` with `in_flight` requests outstanding (the worker's limit)."""
    seconds = asyncio.run(_triton_replay(url, model, mix, in_flight, vocab_size, repeats, timeout_s))
    return MixReplay("triton", in_flight, intra_op_threads, mix.total(), _rows(mix), round(seconds, 4))


def replay_ort(onnx_path: Path, mix: Counter[Shape], *, threads: int, intra_op_threads: int,
               vocab_size: int, repeats: int = 2) -> MixReplay:  # fmt: skip
    """The mix through one in-process ONNX Runtime session called from `threads` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), sess_options=options,
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    feeds = {shape: {"input_ids": ids, "attention_mask": mask}
             for shape, (ids, mask) in _inputs(mix, vocab_size).items()}  # fmt: skip

    def run(calls: list[Shape]) -> float:
        pending = iter(calls)
        lock = threading.Lock()

        def lane() -> None:
            while True:
                with lock:
                    shape = next(pending, None)
                if shape is None:
                    return
                session.run(list(OUTPUT_NAMES), feeds[shape])

        lanes = [threading.Thread(target=lane) for _ in range(threads)]
        started = time.perf_counter()
        for thread in lanes:
            thread.start()
        for thread in lanes:
            thread.join()
        return time.perf_counter() - started

    run(sorted(mix))
    seconds = min(run(_schedule(mix, seed)) for seed in range(repeats))
    label = "onnxruntime"
    return MixReplay(label, threads, intra_op_threads, mix.total(), _rows(mix), round(seconds, 4))


def _rows(mix: Counter[Shape]) -> int:
    return sum(rows * count for (rows, _), count in mix.items())
