"""The scenario table: scenario, events in, attribute events, DLQ, lost, duplicates, recovery, peak RSS."""

from __future__ import annotations

from collections.abc import Sequence

from devtools.reliability.run import ScenarioResult

__all__ = ["format_details", "format_table"]

_COLUMNS = ("scenario", "events in", "attribute events", "DLQ", "lost", "duplicates", "recovery s",
            "peak RSS MiB", "worker deaths")  # fmt: skip


def _row(result: ScenarioResult) -> list[str]:
    tally = result.tally
    recovery = result.max_recovery_s
    return [
        result.scenario + ("" if result.complete else " (INCOMPLETE)"),
        f"{tally.events_in:,}", f"{tally.attribute_events:,}", f"{tally.dlq:,}", f"{tally.lost:,}",
        f"{tally.duplicates:,}", "-" if recovery is None else f"{recovery:.1f}",
        f"{result.peak_rss_bytes / 2**20:,.0f}", str(result.deaths),
    ]  # fmt: skip


def format_table(results: Sequence[ScenarioResult], *, markdown: bool = False) -> str:
    rows = [list(_COLUMNS), *(_row(r) for r in results)]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in _COLUMNS) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths,
             strict=True))) for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_details(result: ScenarioResult) -> str:
    """What lies behind one row: every recovery, wrong outcomes, DLQ codes, the scenario's own figures."""
    tally = result.tally
    parts = [f"{result.scenario}: {result.seconds:.0f} s"]
    if result.recovery_s:
        parts.append("recoveries " + ", ".join(f"{s:.1f}" for s in result.recovery_s) + " s")
    parts += [f"{key}={value}" for key, value in result.details.items()]
    if tally.dlq_codes:
        parts.append("DLQ codes " + ", ".join(f"{k}={v}" for k, v in sorted(tally.dlq_codes.items())))
    if tally.wrong_outcome:
        parts.append(f"WRONG OUTCOME {tally.wrong_outcome}: {tally.wrong_examples}")
    if tally.unknown:
        parts.append(f"UNKNOWN RECORDS {tally.unknown}")
    if tally.lost:
        parts.append(f"LOST e.g. {tally.lost_examples}")
    return "; ".join(parts)
