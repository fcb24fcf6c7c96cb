"""Triton's own `perf_analyzer` as an outside check of the raw Triton figure (issue 13).

`perf_analyzer.sh` fetches and caches the binary; this runs it at one shape with `concurrency` requests
in flight and reads its CSV. Its "Inferences/Second" counts rows (a batch of 32 is 32 inferences), the
same unit as the bench's rows/s. The token ids are drawn like the bench's own (`make_batch`: inside the
vocabulary, full attention mask); perf_analyzer's default random INT64 data would fail the embedding
lookup.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devtools.bench.backends import make_batch

__all__ = ["PerfAnalyzerResult", "fetch_perf_analyzer", "perf_analyzer_command", "run_perf_analyzer"]

SCRIPT = Path(__file__).with_name("perf_analyzer.sh")


@dataclass(frozen=True)
class PerfAnalyzerResult:
    batch_size: int
    seq_len: int
    concurrency: int
    rows_per_s: float | None
    p50_latency_ms: float | None
    error: str | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def fetch_perf_analyzer() -> Path:
    """The cached wrapper (fetched on first use); RuntimeError with the script's output when it fails."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer.sh failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def write_input_data(path: Path, seq_len: int, vocab_size: int) -> Path:
    ids, mask = make_batch(1, seq_len, vocab_size=vocab_size)
    entry = {name: {"content": array[0].tolist(), "shape": [seq_len]}
             for name, array in (("input_ids", ids), ("attention_mask", mask))}  # fmt: skip
    path.write_text(json.dumps({"data": [entry]}))
    return path


def perf_analyzer_command(binary: Path, url: str, model: str, *, batch_size: int, seq_len: int,
                          concurrency: int, data: Path, csv_path: Path,
                          window_ms: int) -> list[str]:  # fmt: skip
    # --stability-percentage 999: on the shared 2-core machine (load average 17 at the time) three windows
    # within 10 % or even 50 % never came, and perf_analyzer gave up without a figure; the figure is the
    # mean of the last three windows, as loaded as every other figure of the run.
    return [str(binary), "-m", model, "-u", url, "-i", "grpc", "-b", str(batch_size),
            "--shape", f"input_ids:{seq_len}", "--shape", f"attention_mask:{seq_len}",
            "--input-data", str(data), "--concurrency-range", str(concurrency),
            "--measurement-interval", str(window_ms), "--stability-percentage", "999",
            "--max-trials", "5", "-f", str(csv_path)]  # fmt: skip


def parse_csv(path: Path) -> tuple[float, float]:
    """(rows/s, p50 latency ms) of the first row of perf_analyzer's -f CSV."""
    with path.open(newline="") as handle:
        row = next(csv.DictReader(handle))
    return float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000


def run_perf_analyzer(url: str, model: str, *, batch_size: int, seq_len: int, concurrency: int,
                      vocab_size: int, work_dir: Path,
                      window_ms: int = 2000) -> PerfAnalyzerResult:  # fmt: skip
    """perf_analyzer's rows/s at [batch_size, seq_len]; a failure is reported in `error`, not raised."""
    work_dir.mkdir(parents=True, exist_ok=True)
    shape = {"batch_size": batch_size, "seq_len": seq_len, "concurrency": concurrency}
    try:
        binary = fetch_perf_analyzer()
        data = write_input_data(work_dir / f"input-{seq_len}.json", seq_len, vocab_size)
        csv_path = work_dir / f"perf_analyzer-{batch_size}x{seq_len}-c{concurrency}.csv"
        command = perf_analyzer_command(binary, url, model, **shape, data=data, csv_path=csv_path,
                                        window_ms=window_ms)  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        (work_dir / "perf_analyzer.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not csv_path.is_file():
            raise RuntimeError(f"exit {done.returncode}: {(done.stdout + done.stderr).strip()[-300:]}")
        rows_per_s, p50 = parse_csv(csv_path)
    except (RuntimeError, OSError, subprocess.TimeoutExpired, StopIteration, KeyError, ValueError) as exc:
        return PerfAnalyzerResult(**shape, rows_per_s=None, p50_latency_ms=None, error=str(exc)[:300])
    return PerfAnalyzerResult(**shape, rows_per_s=round(rows_per_s, 1), p50_latency_ms=round(p50, 2))
