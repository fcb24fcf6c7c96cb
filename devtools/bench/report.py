"""The bench report: results.json, one table (measure, figures, target, ratio) and the PNG plots.

The table is a registry too: `ROWS` holds functions from the results to table rows, in order; a new
pass adds its measure with `row`. A row whose passes did not run (not in --measures) is left out.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.bench.backends import BackendThroughput
from devtools.bench.mix import mix_from_labels
from devtools.bench.plots import scaling_curve, write_plots

__all__ = ["ROWS", "build_results", "format_markdown", "format_table", "print_table", "row", "write_results"]

CPU_NOTE = (
    "{cores} cores shared by the worker(s), Triton, Kafka, Redis and the bench's own producer/reader (and, "
    "on a shared machine, other people's work): absolute rates move with the load; ratios measured in one "
    "run are the figures to read (see cpu_s per pass)."
)
HIT_TARGET = 25_000  # events/s per worker process on the hit path, judged on distinct titles

Row = tuple[str, str, str, str]  # measure, figures, target, ratio
ROWS: list[Callable[[dict[str, Any]], list[Row]]] = []


def row(build: Callable[[dict[str, Any]], list[Row]]) -> Callable[[dict[str, Any]], list[Row]]:
    ROWS.append(build)
    return build


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _fmt(value: float | None, unit: str = "/s") -> str:
    return "n/a" if value is None else f"{value:,.0f}{unit}"


def _verdict(ratio: float | None, target: float | None = None, unit: str = "", *,
             at_most: bool = False) -> str:  # fmt: skip
    if ratio is None:
        return "n/a"
    if target is None:
        return f"{ratio:.2f}{unit}"
    return f"{ratio:.2f}{unit}" + (" ✓" if (ratio <= target if at_most else ratio >= target) else " ✗")


def _mix_text(labels: dict[str, int]) -> str:
    mix = mix_from_labels(labels)
    top = sorted(mix.items(), key=lambda kv: -kv[0][0] * kv[1])[:3]
    text = ", ".join(f"[{r},{s}]×{n}" for (r, s), n in top)
    return text + (f" +{len(mix) - 3} shapes" if len(mix) > 3 else "")


def _limit(p: dict[str, Any], cores: int) -> str:
    """What stopped the pass: the cores (busy share of all of them, and whose) or not the CPU."""
    cpu = {k: v for k, v in p["cpu_s"].items() if not k.startswith("worker-") and k != "machine"}
    span = p["seconds"] * cores
    if span <= 0:  # a tiny pass can drain in the same poll as its first record: no interval to split
        return "pass too short to split its CPU"
    ours, machine = sum(cpu.values()) / span, p["cpu_s"].get("machine", 0.0) / span
    top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])[:3])
    if ours >= 0.85:
        return f"CPU: the bench's processes kept {ours:.0%} of {cores} cores busy (cpu-s {top})"
    if machine >= 0.85:
        return (f"CPU taken by other processes: the machine was {machine:.0%} busy, the bench's processes "
                f"{ours:.0%} (cpu-s {top})")
    return f"not CPU: the machine was {machine:.0%} busy, the bench's processes {ours:.0%} (cpu-s {top})"


def build_results(options: Any, config: Any, model_dir: Path, reason: str, seq_len: int,
                  raw: dict[str, list[BackendThroughput]], bench: Any) -> dict[str, Any]:  # fmt: skip
    """Every figure of the run (passes, matched replays, outside check) as one JSON-able dict."""
    passes = bench.passes
    return {
        "command": options.command,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "note": CPU_NOTE.format(cores=os.cpu_count())},
        "model": {"dir": str(model_dir), "chosen": reason},
        "settings": {"max_batch": config.batch.max_batch, "max_in_flight": config.batch.max_in_flight,
                     "max_wait_ms": config.batch.max_wait_ms, "seq_len": seq_len,
                     "events": bench.extra.get("events"), "quick": options.quick,
                     "triton_model": options.triton_model, "triton_intra_op_threads": bench.triton_threads,
                     "workers": "`enrich worker` subprocesses configured by ENRICH_* variables"},
        "raw": {name: [r.as_row() for r in rows] for name, rows in raw.items()},
        "replays": {name: r.as_row() for name, r in bench.replays.items()},
        "extra": {k: v for k, v in bench.extra.items() if k != "events"},
        "passes": {name: p.summary() for name, p in passes.items()},
        "latencies_ms": {name: p.latencies_ms for name, p in passes.items() if p.latencies_ms},
    }  # fmt: skip


def _efficiency(results: dict[str, Any], name: str) -> float | None:
    p, replay = results["passes"].get(name), results["replays"].get(name)
    if not p or not replay or not replay["seconds"]:
        return None
    return _ratio(p["events_per_s"], p["events"] / replay["seconds"])


def _efficiency_verdict(ratio: float | None) -> str:
    """Above 1 the replay of the same calls ran slower than the worker: the load moved between them."""
    text = _verdict(ratio, 0.90)
    return text + " (> 1: noise, the replay ran at a busier moment)" if ratio and ratio > 1 else text


@row
def _a_efficiency(r: dict[str, Any]) -> list[Row]:
    rows = []
    for name, label in (("triton-model", "Triton"), ("onnx-model", "embedded ORT")):
        p, replay = r["passes"].get(name), r["replays"].get(name)
        if not p or not replay:
            continue
        intra = f"{replay['intra_op_threads']} intra-op thread"
        threads = (f"{replay['concurrency']} in flight, 1 instance × {intra}" if name == "triton-model"
                   else f"{replay['concurrency']} thread × {intra}")  # fmt: skip
        rows.append((f"(a) efficiency: worker vs raw {label}, same batches",
                     f"worker {_fmt(p['events_per_s'])} vs replay {_fmt(p['events'] / replay['seconds'])} "
                     f"({replay['rows_per_s']:,.0f} rows/s; {_mix_text(p['batch_mix'])}; {threads})",
                     "≥ 0.90", _efficiency_verdict(_efficiency(r, name))))  # fmt: skip
    pa = r["extra"].get("perf_analyzer")
    if pa:
        shape = f"[{pa['batch_size']},{pa['seq_len']}], {pa['concurrency']} in flight"
        figures = (f"perf_analyzer {_fmt(pa['rows_per_s'], ' rows/s')} vs bench "
                   f"{_fmt(pa['bench_rows_per_s'])} at {shape}" if pa["rows_per_s"]
                   else f"perf_analyzer failed: {' '.join(pa['error'].split())[-160:]}")  # fmt: skip
        rows.append(("(a) outside check: raw Triton, perf_analyzer", figures, "≈ 1",
                     _verdict(_ratio(pa["bench_rows_per_s"], pa["rows_per_s"]), None, " bench/pa")))
    return rows


@row
def _b_batching(r: dict[str, Any]) -> list[Row]:
    p, one = r["passes"].get("triton-model"), r["passes"].get("triton-batch1")
    if not p or not one:
        return []
    ratio = _ratio(p["events_per_s"], one["events_per_s"])
    return [(f"(b) batching gain: batch {r['settings']['max_batch']} vs 1",
             f"{_fmt(p['events_per_s'])} vs {_fmt(one['events_per_s'])}", "≥ 5×", _verdict(ratio, 5.0, "×"))]


@row
def _c_hits(r: dict[str, Any]) -> list[Row]:
    rows = []
    for name, label in (("cache-hit", "repeated titles (297 distinct)"),
                        ("cache-hit-distinct", "all-distinct titles, pre-warmed")):  # fmt: skip
        p = r["passes"].get(name)
        if p:
            judged = name == "cache-hit-distinct"
            rows.append((f"(c) cache-hit path, 1 worker process: {label}",
                         f"{_fmt(p['events_per_s'])} ({p['cache_hits'] / p['events']:.0%} hits, "
                         f"{p['events']:,} events)", f"≥ {HIT_TARGET:,}/s" if judged else "report",
                         _verdict(_ratio(p["events_per_s"], HIT_TARGET), 1.0 if judged else None)))
    return rows


def latency_bound_ms(r: dict[str, Any]) -> float | None:
    """max_wait + 2 × the compute time of one batch of the dominant shape (p50, alone on Triton)."""
    compute = r["extra"].get("batch_compute")
    return r["settings"]["max_wait_ms"] + 2 * compute["latency_p50_ms"] if compute else None


@row
def _d_latency(r: dict[str, Any]) -> list[Row]:
    bound = latency_bound_ms(r)
    rows = []
    for name, p in r["passes"].items():
        if name.startswith("latency-") and "latency_ms" in p:
            lat, load = p["latency_ms"], name.split("-", 1)[1]
            rows.append((f"(d) latency event_time → attribute event at {load} % of max",
                         f"p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms at "
                         f"{_fmt(p['events_per_s'])}", f"p50 ≤ bound {bound:.0f} ms" if bound else "report",
                         _verdict(_ratio(lat["p50"], bound), 1.0, " of bound", at_most=True)))  # fmt: skip
    return rows


@row
def _e_scaling(r: dict[str, Any]) -> list[Row]:
    points = scaling_curve(r["passes"])
    if len(points) < 2:
        return []
    top = points[-1]
    split = ", ".join(f"{k} {v:.1f}" for k, v in top["cpu_s"].items() if k.startswith("worker-"))
    return [(f"(e) scaling: 1..{top['workers']} embedded-ORT worker processes (1 thread each)",
             " → ".join(f"{p['workers']}: {_fmt(p['events_per_s'])}" for p in points)
             + f"; cpu-s per worker at {top['workers']}: {split}; limit: "
             + _limit(top, r["machine"]["cores"] or 1), "report",
             _verdict(_ratio(top["events_per_s"], points[0]["events_per_s"]), None, "×"))]  # fmt: skip


@row
def _f_backends(r: dict[str, Any]) -> list[Row]:
    onnx, triton = r["passes"].get("onnx-model"), r["passes"].get("triton-model")
    if not onnx or not triton:
        return []
    replays = r["replays"]
    raw = ""
    if "onnx-model" in replays and "triton-model" in replays:
        raw = (f"; raw replays {replays['onnx-model']['rows_per_s']:,.0f} vs "
               f"{replays['triton-model']['rows_per_s']:,.0f} rows/s")
    return [("(f) backends: embedded ORT vs Triton (worker), 1 vs 1 compute thread",
             f"{_fmt(onnx['events_per_s'])} vs {_fmt(triton['events_per_s'])}{raw}", "report",
             _verdict(_ratio(onnx["events_per_s"], triton["events_per_s"]), None, "×"))]


def format_table(results: dict[str, Any]) -> str:
    """One Markdown table: each measure, its figures, the target and the ratio side by side."""
    lines = ["| measure | figures | target | ratio |", "|---|---|---|---|"]
    for build in ROWS:
        lines += [f"| {' | '.join(cells)} |" for cells in build(results)]
    return "\n".join(lines)


def _pass_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, p in results["passes"].items():
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in p["cpu_s"].items())
        lines.append(f"{name:<18} {p['events']:>7} events {p['events_per_s']:>10,.0f}/s  cpu-s: {cpu}")
    return lines


def format_markdown(results: dict[str, Any]) -> str:
    """The run as a Markdown section (command, model, table, per-pass CPU seconds), for RESULTS.md."""
    s = results["settings"]
    return "\n".join([
        f"`{results['command']}` — finished {results['finished_at']}, {results['machine']['cores']} cores",
        "",
        f"Model: {results['model']['chosen']}. Worker settings: max_batch {s['max_batch']}, "
        f"max_in_flight {s['max_in_flight']}, max_wait_ms {s['max_wait_ms']}; most titles' sequence bucket "
        f"{s['seq_len']}; {s['events']} events per throughput pass; Triton instance: 1 × "
        f"{s['triton_intra_op_threads']} intra-op thread; workers: {s['workers']}.",
        "",
        format_table(results),
        "",
        "Per pass: steady-state events/s and CPU seconds each process used while it ran:",
        "```",
        *_pass_lines(results),
        "```",
        "",
        results["machine"]["note"],
    ])  # fmt: skip


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"model: {results['model']['chosen']}  ({results['model']['dir']})")
    print(format_table(results))
    print()
    print("note: " + results["machine"]["note"])
    for line in _pass_lines(results):
        print("  " + line)


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    """results.json, results.md and the plots in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(format_markdown(results) + "\n")
    return write_plots(results, out, latency_bound_ms(results))
