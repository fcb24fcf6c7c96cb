"""Smoke test of `enrich bench` at a tiny size: every measure runs end to end and lands in the report.

It checks that the harness works (services, worker subprocesses, passes, JSON, table, plots), not speed:
the figures of a run this small mean nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devtools.bench.mix import dominant_shape, mix_from_labels, mix_from_metrics, mix_labels
from devtools.bench.report import format_table
from devtools.bench.run import BenchOptions, run_bench

pytestmark = pytest.mark.services


def test_bench_runs_every_measure_at_a_tiny_size(
    tiny_model_dir: Path, tiny_triton_repo: Path, kafka: Any, redis_server: Any,
    triton_factory: Callable[..., Any], tmp_path: Path,
) -> None:  # fmt: skip
    services = SimpleNamespace(kafka=kafka, redis=redis_server, triton=triton_factory(tiny_triton_repo))
    options = BenchOptions(
        model_dir=tiny_model_dir, events=200, quick=True, out=tmp_path / "results",
        raw_duration_s=0.3, latency_duration_s=1.5, command="pytest smoke", max_workers=2,
    )  # fmt: skip
    results = run_bench(options, services)

    out = tmp_path / "results"
    saved = json.loads((out / "results.json").read_text())
    passes = saved["passes"]
    assert passes == json.loads(json.dumps(results["passes"]))
    assert passes["triton-model"]["events"] == 200
    assert saved["model"]["chosen"].startswith("given directory (") and ", base " in saved["model"]["chosen"]
    # The matched replays sent exactly the batches the workers reported on /metrics.
    for name in ("triton-model", "onnx-model"):
        mix = mix_from_labels(passes[name]["batch_mix"])
        assert mix and saved["replays"][name]["requests"] == mix.total()
        assert saved["replays"][name]["rows"] == sum(r * n for (r, _), n in mix.items()) <= 200
    onnx_replay = saved["replays"]["onnx-model"]  # the onnx worker's threads: 1 session thread, 1 intra-op
    triton_threads = saved["settings"]["triton_intra_op_threads"]
    assert onnx_replay["concurrency"] == onnx_replay["intra_op_threads"] == triton_threads == 1
    assert passes["cache-hit-distinct"]["cache_hits"] == passes["cache-hit-distinct"]["events"] == 400
    assert passes["onnx-2workers"]["workers"] == 2 and "worker-1" in passes["onnx-2workers"]["cpu_s"]
    for load in (25, 50, 90):
        lat = passes[f"latency-{load}"]["latency_ms"]
        assert lat["p50"] <= lat["p95"] <= lat["p99"]
        assert len(saved["latencies_ms"][f"latency-{load}"]) == passes[f"latency-{load}"]["events"] > 0
    shadow = saved["extra"]["rollout-shadow-shadow"]  # a tenth of the listings compared (or skipped: busy)
    assert shadow["compared"] > 0 and saved["extra"]["rollout-base-shadow"]["compared"] == 0, shadow
    swap = saved["extra"]["swap"]  # to the candidate copy and back, each reported by the worker
    assert swap["swaps_done"] == 2 and len(swap["pause_ms"]) == 2 and all(s > 0 for s in swap["swap_s"]), swap
    pa = saved["extra"]["perf_analyzer"]
    assert pa["error"] is None and pa["rows_per_s"] > 0, pa
    for png in ("throughput_vs_batch.png", "latency_vs_load.png", "scaling.png"):
        assert (out / png).stat().st_size > 1000
    table = format_table(saved)
    for measure in ("(a) efficiency: worker vs raw Triton", "(a) efficiency: worker vs raw embedded ORT",
                    "(a) outside check", "(b)", "repeated titles", "all-distinct titles", "at 25 % of max",
                    "at 50 % of max", "at 90 % of max", "(e) scaling", "(f)", "(s) shadow overhead",
                    "(w) swap pause"):  # fmt: skip
        assert measure in table, measure
    assert "n/a" not in table
    # Efficiency <= 1 holds by construction (the replay is the worker's own calls, checked above), not as a
    # number: on a loaded machine a 200-event replay lasting 0.09 s once ran slower than the worker's
    # steady span (3,780/s vs 2,176/s), so comparing the figures here would assert speed. The table says so.


def test_mix_is_read_from_the_workers_metrics_text() -> None:
    text = (
        "# HELP enrich_inference_batches_total Inference calls by shape\n"
        "# TYPE enrich_inference_batches_total counter\n"
        'enrich_inference_batches_total{rows="32",seq="16"} 7.0\n'
        'enrich_inference_batches_total{rows="5",seq="32"} 1.0\n'
    )
    mix = mix_from_metrics(text)
    assert mix == {(32, 16): 7, (5, 32): 1}
    assert mix_from_labels(mix_labels(mix)) == mix
    assert dominant_shape(mix) == (32, 16)


def test_demo_says_when_a_pass_is_too_short_to_measure() -> None:
    from devtools.demo import PassStats

    short = PassStats(200, 0.004, cache_hits=200, cache_misses=0)
    assert short.throughput is None and "too short to measure" in short.describe()
    long = PassStats(200, 0.5, cache_hits=0, cache_misses=200)
    assert long.throughput == pytest.approx(400) and "400/s" in long.describe()


def test_a_pass_drained_within_one_poll_has_no_cpu_split_rather_than_a_crash() -> None:
    from devtools.bench.report import _limit

    # CI: 400 events landed in the same poll as the first, so the timed interval rounded to 0 s.
    instant = {"seconds": 0.0, "cpu_s": {"workers": 0.1, "machine": 0.2}}
    assert _limit(instant, 2) == "pass too short to split its CPU"
    busy = {"seconds": 1.0, "cpu_s": {"workers": 1.8, "machine": 1.9}}
    assert _limit(busy, 2).startswith("CPU: the bench's processes kept 90% of 2 cores busy")


def test_steady_rate_counts_the_millisecond_outputs_share() -> None:
    from devtools.bench.passes import steady_rate

    # A cache-hit chunk produced inside one millisecond: at least 99 events in 1 ms, never 0/s.
    assert steady_rate([5_000] * 100, skip_fraction=0.0) == pytest.approx(99_000)
    assert steady_rate([0, 1_000], skip_fraction=0.0) == pytest.approx(1 / 1.001)
    assert steady_rate([7]) == 0.0


def test_gpu_script_cpu_parts_score_a_served_model_against_onnx(
    tiny_model_dir: Path, tiny_triton_repo: Path, triton_factory: Callable[..., Any]
) -> None:
    """The GPU script's accuracy check, pointed at the CPU Triton (same ONNX model): no F1 lost."""
    from devtools.bench.gpu.run import accuracy_delta, triton_runner, trtexec_command

    server = triton_factory(tiny_triton_repo)
    accuracy = accuracy_delta(tiny_model_dir, triton_runner(server.grpc_url, "attribute_extractor"))
    assert accuracy["dev_offers"] > 0 and accuracy["f1_onnx"] > 0
    assert abs(accuracy["f1_delta"]) < 0.005, accuracy
    command = trtexec_command("trtexec", Path("m.onnx"), Path("p.plan"))
    assert "--fp16" in command and "--optShapes=input_ids:32x16,attention_mask:32x16" in command
