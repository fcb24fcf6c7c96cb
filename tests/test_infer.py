"""Inference backends on the tiny model: ONNX Runtime in-process, and a real tritonserver giving the same
outputs; Triton outages surface as BackendUnavailable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workers.backends import (
    InferenceFailed,
    ModelFit,
    ModelOutputs,
    OnnxRuntimeBackend,
    TritonBackend,
    make_backend,
)
from workers.contract.errors import BackendUnavailable, ConfigError, ExitCode, ModelMismatch
from workers.model.decode import ModelLabels
from workers.model.encode import TitleEncoder
from workers.runtime.config import BackendConfig

TITLES = [
    "Lavazza Crema e Gusto Ground Coffee 8.8 oz",
    "Café Bustelo Espresso Dark Roast 10 oz brick",
    "red mug",
    "Starbucks Pike Place Medium Roast Whole Bean Coffee, 28 oz bag, 100% Arabica",
    "",
    "Keurig K-Cup Pods Variety Pack 40 count",
]


def _batches(model_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """A few padded batches of different sizes and sequence buckets, as the worker would send them."""
    encoder = TitleEncoder.from_model_dir(model_dir)
    groups = [TITLES, TITLES[:1], TITLES[2:5], [t + " extra words" * 3 for t in TITLES[:4]]]
    return [encoder.pad_to_bucket(encoder.encode(group)) for group in groups]


def _labels(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "labels.json").read_text())


def _grpc_url(server: Any) -> str:
    return str(server.grpc_url)


def _assert_same_outputs(got: ModelOutputs, want: ModelOutputs) -> None:
    assert got.tag_probs.dtype == np.float32 and got.category_probs.dtype == np.float32
    np.testing.assert_allclose(got.tag_probs, want.tag_probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.category_probs, want.category_probs, rtol=1e-4, atol=1e-5)


def test_onnxruntime_backend_returns_probabilities_of_the_contract_shapes(tiny_model_dir: Path) -> None:
    labels = _labels(tiny_model_dir)

    async def scenario() -> list[ModelOutputs]:
        backend = OnnxRuntimeBackend(tiny_model_dir / "model.onnx")
        try:
            assert await backend.is_ready()
            return [await backend.infer(ids, mask) for ids, mask in _batches(tiny_model_dir)]
        finally:
            await backend.close()

    for (ids, _), out in zip(_batches(tiny_model_dir), asyncio.run(scenario()), strict=True):
        batch, seq = ids.shape
        assert out.tag_probs.shape == (batch, seq, len(labels["tags"]))
        assert out.category_probs.shape == (batch, len(labels["categories"]))
        np.testing.assert_allclose(out.tag_probs.sum(axis=-1), 1.0, atol=1e-4)
        np.testing.assert_allclose(out.category_probs.sum(axis=-1), 1.0, atol=1e-4)


def test_onnxruntime_backend_concurrent_calls_match_sequential_ones(tiny_model_dir: Path) -> None:
    batches = _batches(tiny_model_dir)

    async def scenario() -> tuple[list[ModelOutputs], list[ModelOutputs]]:
        backend = OnnxRuntimeBackend(tiny_model_dir / "model.onnx", max_concurrency=2)
        try:
            sequential = [await backend.infer(ids, mask) for ids, mask in batches]
            concurrent = await asyncio.gather(*(backend.infer(ids, mask) for ids, mask in batches))
            return sequential, list(concurrent)
        finally:
            await backend.close()

    sequential, concurrent = asyncio.run(scenario())
    for got, want in zip(concurrent, sequential, strict=True):
        _assert_same_outputs(got, want)


def test_onnxruntime_backend_rejects_malformed_batches(tiny_model_dir: Path) -> None:
    async def scenario() -> None:
        backend = OnnxRuntimeBackend(tiny_model_dir / "model.onnx")
        try:
            ids = np.ones((2, 16), dtype=np.int64)
            with pytest.raises(InferenceFailed, match=r"\[B,S\]"):
                await backend.infer(ids, np.ones((2, 8), dtype=np.int64))
            with pytest.raises(InferenceFailed, match="empty batch"):
                await backend.infer(ids[:0], ids[:0])
        finally:
            await backend.close()
        assert not await backend.is_ready()

    asyncio.run(scenario())


def test_onnxruntime_backend_names_the_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="enrich export") as raised:
        OnnxRuntimeBackend(tmp_path / "model.onnx")
    assert str(tmp_path / "model.onnx") in str(raised.value) and "ENRICH_MODEL_DIR" in str(raised.value)
    assert raised.value.exit_code == ExitCode.CONFIG


def test_onnxruntime_start_up_check_rejects_labels_of_another_export(tiny_model_dir: Path) -> None:
    labels = ModelLabels.from_file(tiny_model_dir / "labels.json")
    counts = (len(labels.tags), len(labels.categories))

    async def scenario() -> None:
        backend = OnnxRuntimeBackend(tiny_model_dir / "model.onnx")
        try:
            await backend.check_model(ModelFit(8, label_counts=counts))  # its own labels fit
            with pytest.raises(ModelMismatch, match=r"category_probs.*different exports"):
                await backend.check_model(ModelFit(8, label_counts=(counts[0], counts[1] - 1)))
            with pytest.raises(ModelMismatch, match="tag_probs"):
                await backend.check_model(ModelFit(8, label_counts=(counts[0] + 2, counts[1])))
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_make_backend_builds_the_configured_kind(tiny_model_dir: Path) -> None:
    onnx = make_backend(BackendConfig(kind="onnx", model_dir=tiny_model_dir), max_in_flight=2)
    assert isinstance(onnx, OnnxRuntimeBackend)
    asyncio.run(onnx.close())
    triton = make_backend(BackendConfig(kind="triton", triton_url="127.0.0.1:1"), max_in_flight=2)
    assert isinstance(triton, TritonBackend) and triton.url == "127.0.0.1:1"
    with pytest.raises(ConfigError, match="model directory"):
        make_backend(BackendConfig(kind="onnx", model_dir=None), max_in_flight=1)


@pytest.fixture(scope="module")
def triton(triton_factory: Any, tiny_triton_repo: Path) -> Any:
    return triton_factory(tiny_triton_repo)


@pytest.mark.services
def test_triton_backend_matches_onnxruntime_with_requests_in_flight(
    triton: Any, tiny_model_dir: Path
) -> None:
    batches = _batches(tiny_model_dir)

    async def scenario() -> tuple[list[ModelOutputs], list[ModelOutputs]]:
        ort = OnnxRuntimeBackend(tiny_model_dir / "model.onnx")
        backend = TritonBackend(_grpc_url(triton), "attribute_extractor", max_in_flight=3, timeout_s=30)
        try:
            assert await backend.is_ready()
            await backend.check_model(ModelFit(len(TITLES)))
            expected = [await ort.infer(ids, mask) for ids, mask in batches]
            # every batch twice, all at once: more requests than max_in_flight, so some queue on the semaphore
            got = await asyncio.gather(*(backend.infer(ids, mask) for ids, mask in batches * 2))
            return list(got), expected * 2
        finally:
            await backend.close()
            await ort.close()

    got, expected = asyncio.run(scenario())
    for out, want in zip(got, expected, strict=True):
        _assert_same_outputs(out, want)


@pytest.mark.services
def test_triton_start_up_check_rejects_batches_above_max_batch_size(triton: Any) -> None:
    async def scenario() -> None:
        backend = TritonBackend(_grpc_url(triton), "attribute_extractor", max_in_flight=1, timeout_s=30)
        try:
            with pytest.raises(ModelMismatch, match="max_batch_size"):
                await backend.check_model(ModelFit(1_000_000))
            missing = TritonBackend(_grpc_url(triton), "no_such_model", max_in_flight=1, timeout_s=30)
            assert not await missing.is_ready()
            with pytest.raises(BackendUnavailable, match="not ready"):
                await missing.check_model(ModelFit(1))
            await missing.close()
        finally:
            await backend.close()

    asyncio.run(scenario())


async def _infer_once_it_answers(backend: TritonBackend, ids: Any, mask: Any, *, within_s: float) -> None:
    """A resumed server first works off what queued while it was stopped, which took past the 2 s deadline
    on a loaded machine (one fresh-clone run failed here): wait for an answer, bounded, not for 2 s."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await backend.infer(ids, mask)
            return
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.services
def test_triton_hung_or_stopped_raises_backend_unavailable(
    triton_factory: Any, tiny_triton_repo: Path, tiny_model_dir: Path
) -> None:
    """A server of its own, since this test freezes and then stops it."""
    server = triton_factory(tiny_triton_repo)
    ids, mask = _batches(tiny_model_dir)[0]
    pid = server.process.pid

    async def scenario() -> None:
        backend = TritonBackend(_grpc_url(server), "attribute_extractor", max_in_flight=2, timeout_s=2.0)
        try:
            await backend.infer(ids, mask)
            os.kill(pid, signal.SIGSTOP)  # hung server: only the per-request deadline ends the call
            try:
                with pytest.raises(BackendUnavailable, match="DEADLINE_EXCEEDED"):
                    await backend.infer(ids, mask)
            finally:
                os.kill(pid, signal.SIGCONT)
            await _infer_once_it_answers(backend, ids, mask, within_s=30.0)

            server.stop()  # gone: connection refused
            with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
                await backend.infer(ids, mask)
            assert not await backend.is_ready()
        finally:
            await backend.close()

    asyncio.run(scenario())
