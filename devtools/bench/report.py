"""The bench report: results.json, the table (measure, value, target, ratio) and two PNG plots."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from devtools.bench.backends import BackendThroughput
from devtools.bench.passes import PassResult

__all__ = ["build_results", "format_markdown", "format_table", "print_table", "write_plots"]

CPU_NOTE = (
    "{cores} cores shared by the worker(s), Triton, Kafka, Redis and the bench's own producer/reader: "
    "every end-to-end figure competes for the same CPUs as the model (see cpu_s per pass)."
)


def _raw_at(rows: list[BackendThroughput], batch_size: int) -> BackendThroughput | None:
    return next((r for r in rows if r.batch_size == batch_size), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def build_results(options: Any, config: Any, model_dir: Path, reason: str, seq_len: int,
                  raw: dict[str, list[BackendThroughput]], passes: dict[str, PassResult],
                  notes: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Every figure of the run, with the measures (a)-(f) computed from the passes, saved as results.json."""
    batch = config.batch.max_batch
    rate = {name: p.events_per_s for name, p in passes.items()}
    raw_triton = _raw_at(raw["triton"], batch)
    raw_ort = _raw_at(raw["onnxruntime"], batch)
    measures: dict[str, dict[str, Any]] = {
        "a_efficiency": {"worker_events_per_s": rate.get("triton-model"),
                         "raw_triton_rows_per_s": raw_triton.rows_per_s if raw_triton else None,
                         "ratio": _ratio(rate.get("triton-model"), raw_triton and raw_triton.rows_per_s),
                         "target": 0.90},
        "b_batching_gain": {"batch": batch, "batch_events_per_s": rate.get("triton-model"),
                            "batch1_events_per_s": rate.get("triton-batch1"),
                            "ratio": _ratio(rate.get("triton-model"), rate.get("triton-batch1")),
                            "target": 5.0},
        "c_cache_hits": {"events_per_s": rate.get("cache-hit"),
                         "hit_fraction": (passes["cache-hit"].cache_hits / passes["cache-hit"].events
                                          if "cache-hit" in passes else None),
                         "ratio": _ratio(rate.get("cache-hit"), 25_000), "target": 25_000},
        "e_scale_out": {"one_worker_events_per_s": rate.get("triton-model"),
                        "two_workers_events_per_s": rate.get("triton-2workers"),
                        "ratio": _ratio(rate.get("triton-2workers"), rate.get("triton-model"))},
        "f_backends": {"onnx_worker_events_per_s": rate.get("onnx-model"),
                       "triton_worker_events_per_s": rate.get("triton-model"),
                       "raw_onnx_rows_per_s": raw_ort.rows_per_s if raw_ort else None,
                       "raw_triton_rows_per_s": raw_triton.rows_per_s if raw_triton else None,
                       "ratio": _ratio(rate.get("onnx-model"), rate.get("triton-model"))},
    }  # fmt: skip
    if "latency" in passes:
        lat = passes["latency"].summary()["latency_ms"]
        measures["d_latency"] = {"offered_events_per_s": round(rate["latency"], 1), **lat}
    return {
        "command": options.command,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "note": CPU_NOTE.format(cores=os.cpu_count())},
        "model": {"dir": str(model_dir), "chosen": reason},
        "settings": {"max_batch": batch, "max_in_flight": config.batch.max_in_flight,
                     "max_wait_ms": config.batch.max_wait_ms, "seq_len": seq_len,
                     "events": notes.get("events"),
                     "quick": options.quick, "triton_model": options.triton_model,
                     "workers": "`enrich worker` subprocesses configured by ENRICH_* variables"},
        "measures": measures,
        "raw": {name: [r.as_row() for r in rows] for name, rows in raw.items()},
        "passes": {name: p.summary() for name, p in passes.items()},
        "latencies_ms": passes["latency"].latencies_ms if "latency" in passes else [],
        "notes": notes,
    }  # fmt: skip


def _fmt(value: float | None, unit: str = "/s") -> str:
    return "n/a" if value is None else f"{value:,.0f}{unit}"


def format_table(results: dict[str, Any]) -> str:
    """One Markdown table: each measure, its figures, the target and the ratio side by side."""
    m = results["measures"]
    s = results["settings"]
    a, b, c, e, f = (m["a_efficiency"], m["b_batching_gain"], m["c_cache_hits"], m["e_scale_out"],
                     m["f_backends"])  # fmt: skip

    def verdict(ratio: float | None, target: float | None, unit: str = "") -> str:
        if ratio is None:
            return "n/a"
        return f"{ratio:.2f}{unit}" + ("" if target is None else (" ✓" if ratio >= target else " ✗"))

    rows = [
        ("(a) efficiency: worker vs raw Triton",
         f"worker {_fmt(a['worker_events_per_s'])} vs Triton {_fmt(a['raw_triton_rows_per_s'])} "
         f"at [{s['max_batch']},{s['seq_len']}], {s['max_in_flight']} in flight", "≥ 0.90",
         verdict(a["ratio"], 0.90)),
        (f"(b) batching gain: batch {s['max_batch']} vs 1",
         f"{_fmt(b['batch_events_per_s'])} vs {_fmt(b['batch1_events_per_s'])}", "≥ 5×",
         verdict(b["ratio"], 5.0, "×")),
        ("(c) cache-hit path, 1 worker process",
         f"{_fmt(c['events_per_s'])} ({(c['hit_fraction'] or 0):.0%} hits)", "≥ 25,000/s",
         verdict(c["ratio"], 1.0)),
    ]
    if "d_latency" in m:
        d = m["d_latency"]
        rows.append(("(d) latency event_time → attribute event",
                     f"p50 {d['p50']:.0f} ms, p95 {d['p95']:.0f} ms, p99 {d['p99']:.0f} ms "
                     f"at {_fmt(d['offered_events_per_s'])} (½ of max)", "report", "-"))
    rows += [
        ("(e) scale-out: 2 vs 1 worker processes",
         f"{_fmt(e['two_workers_events_per_s'])} vs {_fmt(e['one_worker_events_per_s'])}", "report",
         verdict(e["ratio"], None, "×")),
        ("(f) backends: embedded ORT vs Triton (worker)",
         f"{_fmt(f['onnx_worker_events_per_s'])} vs {_fmt(f['triton_worker_events_per_s'])}; raw "
         f"{_fmt(f['raw_onnx_rows_per_s'])} vs {_fmt(f['raw_triton_rows_per_s'])}", "report",
         verdict(f["ratio"], None, "×")),
    ]  # fmt: skip
    lines = ["| measure | figures | target | ratio |", "|---|---|---|---|"]
    lines += [f"| {name} | {figures} | {target} | {ratio} |" for name, figures, target, ratio in rows]
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
        f"max_in_flight {s['max_in_flight']}, max_wait_ms {s['max_wait_ms']}; typical sequence bucket "
        f"{s['seq_len']}; {s['events']} events per throughput pass; workers: {s['workers']}.",
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


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """throughput_vs_batch.png (raw backends + worker points) and latency.png (distribution); JSON too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(format_markdown(results) + "\n")
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in results["raw"].items():
        if rows:
            ax.plot([r["batch_size"] for r in rows], [r["rows_per_s"] for r in rows], marker="o",
                    label=f"raw {name}")  # fmt: skip
    m, s = results["measures"], results["settings"]
    points = [(1, m["b_batching_gain"]["batch1_events_per_s"]),
              (s["max_batch"], m["a_efficiency"]["worker_events_per_s"])]
    points = [(x, y) for x, y in points if y]
    if points:
        ax.plot(*zip(*points, strict=True), marker="s", linestyle="--", label="worker end-to-end (Triton)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("rows (events) / s")
    ax.set_title(f"Throughput vs batch size (seq {s['seq_len']}, {results['machine']['cores']} cores)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_batch.png", dpi=110)
    written.append(out / "throughput_vs_batch.png")
    plt.close(fig)
    latencies = results["latencies_ms"]
    if latencies:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.hist(latencies, bins=60, color="tab:blue", alpha=0.8)
        d = m["d_latency"]
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.axvline(d[q], color="black", linestyle=style, label=f"{q} {d[q]:.0f} ms")
        ax.set_xlabel("event_time → attribute event (ms)")
        ax.set_ylabel("events")
        ax.set_title(f"Latency at {d['offered_events_per_s']:,.0f} events/s (half of max throughput)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        written.append(out / "latency.png")
        plt.close(fig)
    return written
