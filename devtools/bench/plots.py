"""The bench's PNG plots: throughput vs batch size, latency vs load (with its bound), the scaling curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["scaling_curve", "write_plots"]


def scaling_curve(passes: dict[str, Any]) -> list[dict[str, Any]]:
    """The scaling passes (onnx-model, onnx-<n>workers) ordered by worker count."""
    chosen = [p for name, p in passes.items()
              if name == "onnx-model" or (name.startswith("onnx-") and name.endswith("workers"))]  # fmt: skip
    return sorted(chosen, key=lambda p: p["workers"])


def write_plots(results: dict[str, Any], out: Path, bound_ms: float | None = None) -> list[Path]:
    """throughput_vs_batch.png, latency_vs_load.png (p50/p95/p99 and the bound) and scaling.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("throughput_vs_batch.png", _throughput), ("latency_vs_load.png", _latency),
                       ("scaling.png", _scaling)):  # fmt: skip
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if draw(ax, results, bound_ms):
            ax.grid(True, alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            written.append(out / name)
        plt.close(fig)
    return written


def _throughput(ax: Any, results: dict[str, Any], bound_ms: float | None) -> bool:
    s, passes = results["settings"], results["passes"]
    for name, rows in results["raw"].items():
        if rows:
            ax.plot([r["batch_size"] for r in rows], [r["rows_per_s"] for r in rows], marker="o",
                    label=f"raw {name} [b, {s['seq_len']}]")  # fmt: skip
    points = [(1, passes.get("triton-batch1", {}).get("events_per_s")),
              (s["max_batch"], passes.get("triton-model", {}).get("events_per_s"))]  # fmt: skip
    points = [(x, y) for x, y in points if y]
    if points:
        ax.plot(*zip(*points, strict=True), marker="s", linestyle="--", label="worker end-to-end (Triton)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("rows (events) / s")
    ax.set_title(f"Throughput vs batch size ({results['machine']['cores']} cores)")
    return bool(points or any(results["raw"].values()))


def _latency(ax: Any, results: dict[str, Any], bound_ms: float | None) -> bool:
    loads = sorted((p["events_per_s"], p["latency_ms"]) for name, p in results["passes"].items()
                   if name.startswith("latency-") and "latency_ms" in p)  # fmt: skip
    if not loads:
        return False
    rates = [rate for rate, _ in loads]
    for q, style in (("p50", "-o"), ("p95", "--o"), ("p99", ":o")):
        ax.plot(rates, [lat[q] for _, lat in loads], style, label=q)
    if bound_ms:
        label = f"bound max_wait + 2×batch = {bound_ms:.0f} ms"
        ax.axhline(bound_ms, color="black", linewidth=1, label=label)
    ax.set_xlabel("offered events/s (25 %, 50 %, 90 % of the measured max)")
    ax.set_ylabel("event_time → attribute event (ms)")
    ax.set_yscale("log")
    ax.set_title("Latency under load, 1 worker process (Triton, no cache)")
    return True


def _scaling(ax: Any, results: dict[str, Any], bound_ms: float | None) -> bool:
    curve = scaling_curve(results["passes"])
    if len(curve) < 2:
        return False
    workers = [p["workers"] for p in curve]
    ax.plot(workers, [p["events_per_s"] for p in curve], "-o", label="events/s (embedded ORT)")
    base = curve[0]["events_per_s"]
    ax.plot(workers, [base * w for w in workers], ":", color="grey", label="linear")
    ax.set_xticks(workers)
    ax.set_xlabel("worker processes (1 ORT thread each)")
    ax.set_ylabel("events / s")
    ax.set_title(f"Scaling on {results['machine']['cores']} cores")
    return True
