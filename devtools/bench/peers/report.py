"""The peers pass as results (peers.json) and one Markdown table (peers.md, printed)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["format_peers", "peers_results"]


def peers_results(options: Any, model_dir: Path, reason: str, events: int, rows: dict[str, dict[str, Any]],
                  skipped: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    from workers.runtime.config import load_config

    batch = load_config(None).batch
    return {
        "command": options.command,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "model": {"dir": str(model_dir), "chosen": reason},
        "settings": {"events": events, "max_batch": batch.max_batch, "max_wait_ms": batch.max_wait_ms,
                     "max_in_flight": batch.max_in_flight, "cache": "off (no Redis) for every contestant"},
        "contestants": rows,
        "skipped": skipped,
    }  # fmt: skip


def _checks(row: dict[str, Any]) -> str:
    lost = "all out" if row["lost"] == 0 and row["duplicates"] == 0 else \
        f"{row['lost']} lost, {row['duplicates']} dup"
    if "differing" not in row:
        return lost
    same = "values = ours" if row["differing"] == 0 else f"{row['differing']} differ from ours"
    return f"{lost}; {same}"


def format_peers(results: dict[str, Any]) -> str:
    """One row per contestant: batching, events/s, latency, ours/peer ratios and the output checks."""
    s = results["settings"]
    lines = [
        f"Peers, one run on one broker and one Triton: {s['events']} listings per throughput pass; "
        f"max_batch {s['max_batch']}, max_wait {s['max_wait_ms']} ms, {s['max_in_flight']} in flight; "
        f"model: {results['model']['chosen']}.",
        "",
        "| contestant | batching | events/s | its CPU s | p50 / p99 ms | ours/peer events/s (> 1: ours "
        "faster) | ours/peer p50 (< 1: ours quicker) | output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["contestants"].items():
        lat = row["latency"]
        ratio = row.get("ours_over_peer", {})
        lines.append(
            f"| {name} | {row['batching']} | {row['events_per_s']:,.0f} | {row['cpu_s']:.2f} "
            f"| {lat['p50_ms']:.0f} / "
            f"{lat['p99_ms']:.0f} | {_x(ratio.get('events_per_s'))} | {_x(ratio.get('p50'))} "
            f"| {_checks(row)} |"
        )
    for name, why in results["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    latency_rate = next(iter(results["contestants"].values()))["latency"]["offered_per_s"]
    lines += ["", f"CPU s: the contestant's process tree while it enriched the {s['events']} listings "
              "(Triton, Kafka and the bench not counted). "
              f"Latency: event_time → the output's broker append time at {latency_rate:,.0f} listings/s "
              "offered to each (half the slowest one's throughput). Only ratios mean anything on a shared "
              f"{results['machine']['cores']}-core machine."]  # fmt: skip
    return "\n".join(lines)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}×"
