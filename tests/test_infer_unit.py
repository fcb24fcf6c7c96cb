"""TritonBackend's own logic with a stand-in client: the in-flight cap, error mapping, the config check.
(The same backend against a real tritonserver is in test_infer.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from workers.backends import InferenceFailed, TritonBackend, check_triton_model_config
from workers.contract.errors import BackendUnavailable, ModelMismatch
from workers.runtime.metrics import WorkerMetrics

TAGS, CATEGORIES = 5, 3


class _Result:
    def __init__(self, batch: int, seq: int) -> None:
        self._arrays = {
            "tag_probs": np.full((batch, seq, TAGS), 1 / TAGS, dtype=np.float32),
            "category_probs": np.full((batch, CATEGORIES), 1 / CATEGORIES, dtype=np.float32),
        }

    def as_numpy(self, name: str) -> np.ndarray:
        return self._arrays[name]


class _SlowClient:
    """Answers after a short pause and records how many requests were outstanding at once."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.outstanding = 0
        self.peak = 0
        self.fail_with = fail_with

    async def infer(self, model_name: str, inputs: list[Any], **kwargs: Any) -> _Result:
        self.outstanding += 1
        self.peak = max(self.peak, self.outstanding)
        try:
            await asyncio.sleep(0.01)
            if self.fail_with is not None:
                raise self.fail_with
            batch, seq = inputs[0].shape()
            return _Result(batch, seq)
        finally:
            self.outstanding -= 1

    async def close(self) -> None:
        pass


def _backend(client: _SlowClient, metrics: WorkerMetrics | None = None, in_flight: int = 3) -> TritonBackend:
    return TritonBackend(
        "127.0.0.1:1",
        "m",
        max_in_flight=in_flight,
        timeout_s=5,
        metrics=metrics,
        client=client,  # type: ignore[arg-type]
    )


def _batch(batch: int = 4, seq: int = 16) -> tuple[np.ndarray, np.ndarray]:
    ids = np.ones((batch, seq), dtype=np.int64)
    return ids, np.ones_like(ids)


def test_no_more_than_max_in_flight_requests_are_outstanding() -> None:
    client = _SlowClient()
    metrics = WorkerMetrics()

    async def scenario() -> None:
        backend = _backend(client, metrics, in_flight=3)
        outputs = await asyncio.gather(*(backend.infer(*_batch()) for _ in range(10)))
        assert all(out.tag_probs.shape == (4, 16, TAGS) for out in outputs)

    asyncio.run(scenario())
    assert client.peak == 3
    assert metrics.registry.get_sample_value("enrich_inference_latency_seconds_count") == 10


@pytest.mark.parametrize("status", ["StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"])
def test_outage_statuses_become_backend_unavailable(status: str) -> None:
    metrics = WorkerMetrics()
    client = _SlowClient(InferenceServerException("down", status=status))
    with pytest.raises(BackendUnavailable, match=status):
        asyncio.run(_backend(client, metrics).infer(*_batch()))
    assert metrics.registry.get_sample_value("enrich_backend_failures_total") == 1


def test_other_server_errors_are_not_retriable() -> None:
    client = _SlowClient(InferenceServerException("bad shape", status="StatusCode.INVALID_ARGUMENT"))
    with pytest.raises(InferenceFailed, match="bad shape") as caught:
        asyncio.run(_backend(client).infer(*_batch()))
    assert not caught.value.retriable


def _config(max_batch_size: int = 64, dims: list[str] | None = None) -> dict[str, Any]:
    tensor = {"data_type": "TYPE_INT64", "dims": dims or ["-1"]}
    return {
        "name": "attribute_extractor",
        "max_batch_size": max_batch_size,
        "input": [{"name": "input_ids", **tensor}, {"name": "attention_mask", **tensor}],
        "output": [{"name": "tag_probs"}, {"name": "category_probs"}],
    }


def test_model_config_check() -> None:
    check_triton_model_config(_config(64), batch_size=64, max_seq_len=128)
    with pytest.raises(ModelMismatch, match="max_batch_size=16"):
        check_triton_model_config(_config(16), batch_size=32, max_seq_len=None)
    with pytest.raises(ModelMismatch, match="64 tokens"):
        check_triton_model_config(_config(64, ["64"]), batch_size=8, max_seq_len=128)
    no_outputs = {**_config(), "output": []}
    with pytest.raises(ModelMismatch, match="tag_probs"):
        check_triton_model_config(no_outputs, batch_size=8, max_seq_len=None)
