"""The scenario table: scenario, events in, attribute events, DLQ, lost, duplicates (and the bound they must
stay within), recovery, peak RSS; a scenario that failed a check is marked FAILED, its details say why."""

from __future__ import annotations

from collections.abc import Sequence

from devtools.reliability.run import ScenarioResult

__all__ = ["format_details", "format_table"]

_COLUMNS = ("scenario", "events in", "attribute events", "DLQ", "lost", "duplicates", "duplicate bound",
            "recovery s", "peak RSS MiB", "worker deaths")  # fmt: skip


def _row(result: ScenarioResult) -> list[str]:
    tally, recovery = result.tally, result.max_recovery_s
    return [
        result.scenario + (" (FAILED)" if result.problems() else ""),
        *(f"{n:,}" for n in (tally.events_in, tally.attribute_events, tally.dlq, tally.lost, tally.duplicates,
                              result.duplicate_bound)),
        "-" if recovery is None else f"{recovery:.1f}", f"{result.peak_rss_bytes / 2**20:,.0f}",
        str(result.deaths),
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
    problems = result.problems()
    if problems:
        parts.append("FAILED: " + ", ".join(problems))
    if result.faults:
        parts.append(f"in-flight windows {result.in_flight_windows} ({result.window})")
    if result.produce_errors:
        parts.append(f"PRODUCE ERRORS e.g. {result.produce_errors[:5]}")
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
