"""`enrich predict MODEL_DIR IN.jsonl OUT.jsonl`: offline batch prediction, the worker's results, no Kafka.

For catalog backfills and for scoring the model with another metric. Each input line is a JSON object with
the title in ``input`` (OA-Mine files) or ``title``, optionally ``category`` and ``id``/``listing_id``; each
output line, in input order, is ``{"line", "title", "category": {"label", "confidence"}, "attributes":
[{"name", "value", "confidence", "start", "end", "source_field", "normalized"}]}`` plus the input's id and
``given_category`` when it had them — or ``{"line", "error"}`` for a line that holds no title, so output
line N always answers input line N.

Same code as the worker: the model directory's tokenizer and labels (`ServedModel`), the ONNX Runtime
backend of `workers.backends`, padding to the same sequence buckets, and `workers.stages.decode.decode_title`
(category, attributes restricted to it, normalised values). The given category is passed through, never
used for decoding, since the worker does not use one either.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from workers.backends import OnnxRuntimeBackend
from workers.model.served import ServedModel
from workers.stages.decode import decode_title

__all__ = ["PredictReport", "parse_line", "predict_file"]

# Lines read, sorted by token count and cut into batches at a time: sorting a window of lines keeps the
# padding as small as the worker's per-bucket batching does, while memory stays bounded on any file size.
WINDOW_LINES = 4096


@dataclass(frozen=True)
class PredictReport:
    titles: int
    errors: int
    seconds: float

    @property
    def titles_per_s(self) -> float:
        return self.titles / self.seconds if self.seconds > 0 else 0.0


def parse_line(line: str) -> tuple[str, dict[str, Any]]:
    """The title of one input line and the fields passed through; ValueError says what is wrong."""
    if not line.strip():
        raise ValueError("empty line")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from exc
    title = row.get("input", row.get("title")) if isinstance(row, dict) else None
    if not isinstance(title, str) or not title.strip():
        raise ValueError("not an object with a non-empty string 'input' or 'title'")
    extra = {key: row[key] for key in ("id", "listing_id") if key in row}
    if "category" in row:
        extra["given_category"] = row["category"]
    return title, extra


def _windows(handle: TextIO) -> Iterator[list[tuple[int, str]]]:
    window: list[tuple[int, str]] = []
    for number, line in enumerate(handle, start=1):
        window.append((number, line))
        if len(window) >= WINDOW_LINES:
            yield window
            window = []
    if window:
        yield window


async def _predict_window(
    window: list[tuple[int, str]], model: ServedModel, backend: OnnxRuntimeBackend, batch_size: int
) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    titles: list[tuple[int, str]] = []  # (row index, title)
    for number, line in window:
        try:
            title, extra = parse_line(line)
        except ValueError as exc:
            rows.append({"line": number, "error": str(exc)})
            continue
        rows.append({"line": number, **extra, "title": title})
        titles.append((len(rows) - 1, title))
    encoded = model.encoder.encode([title for _, title in titles])
    order = sorted(range(len(titles)), key=lambda i: encoded[i].length)
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        outputs = await backend.infer(*model.encoder.pad_to_bucket([encoded[i] for i in batch]))
        for row, i in enumerate(batch):
            index, title = titles[i]
            result = decode_title(
                title, encoded[i], outputs.tag_probs[row], outputs.category_probs[row], model.labels,
                model.coverage,
            )  # fmt: skip
            rows[index]["category"], rows[index]["attributes"] = result.category, result.attributes
    return rows, len(titles)


async def _run(
    model_dir: Path, in_path: Path, out_path: Path, batch_size: int, threads: int
) -> PredictReport:
    model = ServedModel.load(model_dir)
    backend = OnnxRuntimeBackend(model_dir / "model.onnx", intra_op_threads=threads)
    started = time.perf_counter()
    titles = errors = 0
    try:
        with in_path.open(encoding="utf-8") as source, out_path.open("wb") as sink:
            for window in _windows(source):
                rows, done = await _predict_window(window, model, backend, batch_size)
                titles, errors = titles + done, errors + len(rows) - done
                sink.writelines(orjson.dumps(row) + b"\n" for row in rows)
    finally:
        await backend.close()
    return PredictReport(titles, errors, time.perf_counter() - started)


def predict_file(
    model_dir: Path, in_path: Path, out_path: Path, *, batch_size: int = 64, threads: int = 2
) -> PredictReport:
    """Predict every title of ``in_path`` into ``out_path`` (JSON lines, input order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return asyncio.run(_run(Path(model_dir), Path(in_path), Path(out_path), batch_size, threads))
