"""tritonserver serves the exported tiny model (CPU python backend + ONNX Runtime) and returns the same
attributes as the in-process torch model; a malformed request fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient

from devtools.fixtures import DEFAULT_FIXTURE_PATH
from training.data import load_offers
from training.evaluate import predict
from training.model import load_model, torch_runner
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder

pytestmark = pytest.mark.services
MODEL = "attribute_extractor"


def inputs(input_ids: np.ndarray, attention_mask: np.ndarray) -> list[InferInput]:
    tensors = []
    for name, array in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        tensor = InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


async def infer_all(url: str, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[Any]:
    """Send all batches at once (so the dynamic batcher can merge them); exceptions are returned."""
    client = InferenceServerClient(url)
    try:
        calls = [client.infer(MODEL, inputs(ids, mask)) for ids, mask in batches]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await client.close()


@pytest.fixture(scope="module")
def triton_url(triton_factory: Callable[..., Any], tiny_triton_repo: Path) -> str:
    return triton_factory(tiny_triton_repo).grpc_url


def test_triton_returns_the_in_process_attributes(triton_url: str, tiny_model_dir: Path) -> None:
    texts = [o.text for o in load_offers(DEFAULT_FIXTURE_PATH)[:40]]
    texts.append(
        "Søren Shoes Women's Crème Loafer 😀, Navy, 8 M US " + "with a much longer tail of words " * 4
    )
    labels = ModelLabels.from_file(tiny_model_dir / "labels.json")
    encoder = TitleEncoder.from_model_dir(tiny_model_dir)
    chunks = [texts[i : i + 7] for i in range(0, len(texts), 7)]
    padded = [encoder.pad_to_bucket(encoder.encode(chunk)) for chunk in chunks]
    assert len({ids.shape[1] for ids, _ in padded}) > 1  # several sequence buckets in flight together
    results = asyncio.run(infer_all(triton_url, padded))
    served = [(r.as_numpy("tag_probs"), r.as_numpy("category_probs")) for r in results]
    in_process = torch_runner(load_model(tiny_model_dir))
    for (ids, mask), (tag_probs, category_probs) in zip(padded, served, strict=True):
        expected_tags, expected_categories = in_process(ids, mask)
        assert tag_probs.shape == expected_tags.shape
        assert np.abs(tag_probs - expected_tags).max() < 1e-4
        assert np.abs(category_probs - expected_categories).max() < 1e-4
    via_triton = []
    for chunk, outputs in zip(chunks, served, strict=True):
        via_triton += predict(
            chunk, lambda ids, mask, out=outputs: out, encoder, labels, batch_size=len(chunk)
        )
    local = predict(texts, in_process, encoder, labels, batch_size=7)
    assert [(p.category, [(a.name, a.value, a.start, a.end) for a in p.attributes]) for p in via_triton] == [
        (p.category, [(a.name, a.value, a.start, a.end) for a in p.attributes]) for p in local
    ]
    assert sum(len(p.attributes) for p in local) > len(texts)  # the comparison is not vacuous


def test_a_malformed_request_fails_alone(triton_url: str) -> None:
    good = (np.full((2, 16), 5, dtype=np.int64), np.ones((2, 16), dtype=np.int64))
    mismatched = (np.full((2, 16), 5, dtype=np.int64), np.ones((2, 32), dtype=np.int64))
    too_long = (np.full((1, 128), 5, dtype=np.int64), np.ones((1, 128), dtype=np.int64))
    first, bad, long, second = asyncio.run(infer_all(triton_url, [good, mismatched, too_long, good]))
    assert isinstance(bad, Exception) and "bad request" in str(bad)
    assert isinstance(long, Exception) and "largest bucket" in str(long)
    for result in (first, second):
        assert not isinstance(result, Exception), result
        assert result.as_numpy("tag_probs").shape[:2] == (2, 16)
