"""`enrich predict` on the tiny exported model gives what the worker's infer stage gives for the titles."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.model_fixtures import FIXTURE_OFFERS
from workers.backends import OnnxRuntimeBackend
from workers.contract.events import Listing, SourceRecord
from workers.contract.results import ListingResult
from workers.model.served import ServedModel
from workers.predict import parse_line
from workers.runtime.config import FlowConfig
from workers.runtime.metrics import WorkerMetrics
from workers.stages.cache import ResultCache
from workers.stages.infer import BatchEnricher
from workers.stages.item import WorkItem
from workers.stages.serving import Serving


def _worker_results(model_dir: Path, titles: list[str], batch_size: int = 16) -> list[ListingResult]:
    """The worker's path: tokenize as the stream loop does, then BatchEnricher (ONNX Runtime, decode)."""
    model = ServedModel.load(model_dir)

    async def run() -> list[ListingResult]:
        backend = OnnxRuntimeBackend(model_dir / "model.onnx")
        serving = Serving(model, backend, ResultCache(None, model.digest, ttl_s=60))
        enricher = BatchEnricher(FlowConfig(), WorkerMetrics())
        results: list[ListingResult] = []
        try:
            for first in range(0, len(titles), batch_size):
                chunk = titles[first : first + batch_size]
                items = [
                    WorkItem(
                        SourceRecord("listings.new", 0, first + i, None),
                        Listing(f"L{first + i}", 1, title, "2026-11-29T09:00:00Z"),
                        consumed_at=0.0,
                        encoded=encoded,
                    )
                    for i, (title, encoded) in enumerate(zip(chunk, model.encoder.encode(chunk), strict=True))
                ]
                results += await enricher.infer(items, serving)
        finally:
            await backend.close()
        return results

    return asyncio.run(run())


def _without_confidence(attributes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in a.items() if k != "confidence"} for a in attributes]


def test_predict_cli_writes_the_workers_results_line_for_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    offers = [json.loads(line) for line in FIXTURE_OFFERS.read_text().splitlines()]
    lines = [json.dumps(o) for o in offers]
    lines[5:5] = [
        json.dumps({"title": "Lavazza Dark Roast Whole Bean Coffee, 2 lb", "id": "own-1"}),
        "",
        "{not json",
        json.dumps({"category": "Coffee"}),
    ]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "workers.cli", "predict", str(tiny_model_dir), str(source), str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "predicted 301 titles (3 lines without a title)" in result.stdout and "titles/s" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["line"] for row in rows] == list(range(1, len(lines) + 1))
    assert [rows[i]["error"] for i in (6, 7, 8)] == [
        "empty line",
        "not valid JSON (Expecting property name enclosed in double quotes)",
        "not an object with a non-empty string 'input' or 'title'",
    ]
    predicted = [row for row in rows if "error" not in row]
    assert predicted[5]["id"] == "own-1" and "given_category" not in predicted[5]
    assert predicted[0]["given_category"] == offers[0]["category"]

    titles = [row["title"] for row in predicted]
    worker = _worker_results(tiny_model_dir, titles)
    for row, expected in zip(predicted, worker, strict=True):
        assert row["category"]["label"] == expected.category["label"]
        assert row["category"]["confidence"] == pytest.approx(expected.category["confidence"], abs=1e-5)
        assert _without_confidence(row["attributes"]) == _without_confidence(expected.attributes)
        for got, want in zip(row["attributes"], expected.attributes, strict=True):
            assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
            assert got["value"] == row["title"][got["start"] : got["end"]]
    assert sum(bool(row["attributes"]) for row in predicted) > 250  # the tiny model does find attributes
    assert any("amount" in a["normalized"] for row in predicted for a in row["attributes"])


@pytest.mark.parametrize(
    ("line", "title", "extra"),
    [
        ('{"input": "A", "category": "Tea"}', "A", {"given_category": "Tea"}),
        ('{"title": "B", "listing_id": "L1"}', "B", {"listing_id": "L1"}),
        ('{"input": "C", "title": "ignored"}', "C", {}),
    ],
)
def test_input_lines_take_input_or_title(line: str, title: str, extra: dict[str, Any]) -> None:
    assert parse_line(line) == (title, extra)


@pytest.mark.parametrize("line", ["[]", '{"title": "  "}', '{"input": 3}', "   "])
def test_lines_without_a_title_are_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)
