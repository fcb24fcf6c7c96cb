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
        raw_duration_s=0.3, latency_duration_s=1.5, command="pytest smoke",
    )  # fmt: skip
    results = run_bench(options, services)

    saved = json.loads((tmp_path / "results" / "results.json").read_text())
    assert saved["measures"] == json.loads(json.dumps(results["measures"]))
    m = saved["measures"]
    assert m["a_efficiency"]["worker_events_per_s"] > 0 and m["a_efficiency"]["raw_triton_rows_per_s"] > 0
    assert m["b_batching_gain"]["batch1_events_per_s"] > 0
    assert m["c_cache_hits"]["events_per_s"] > 0 and m["c_cache_hits"]["hit_fraction"] > 0
    assert m["d_latency"]["p50"] <= m["d_latency"]["p95"] <= m["d_latency"]["p99"]
    assert m["e_scale_out"]["two_workers_events_per_s"] > 0
    assert m["f_backends"]["onnx_worker_events_per_s"] > 0 and m["f_backends"]["raw_onnx_rows_per_s"] > 0
    assert saved["passes"]["triton-model"]["events"] == 200
    assert len(saved["latencies_ms"]) == saved["passes"]["latency"]["events"] > 0
    for png in ("throughput_vs_batch.png", "latency.png"):
        assert (tmp_path / "results" / png).stat().st_size > 1000
    table = format_table(saved)
    for measure in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)"):
        assert measure in table
    assert "n/a" not in table


def test_steady_rate_counts_the_millisecond_outputs_share() -> None:
    from devtools.bench.passes import steady_rate

    # A cache-hit chunk produced inside one millisecond: at least 99 events in 1 ms, never 0/s.
    assert steady_rate([5_000] * 100, skip_fraction=0.0) == pytest.approx(99_000)
    assert steady_rate([0, 1_000], skip_fraction=0.0) == pytest.approx(1 / 1.001)
    assert steady_rate([7]) == 0.0
