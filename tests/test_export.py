"""ONNX export: the contract's inputs/outputs, dynamic axes, and parity with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from training.model import ProbabilityOutputs, load_model


def test_onnx_graph_follows_the_contract(tiny_model_dir: Path) -> None:
    graph = onnx.load(str(tiny_model_dir / "model.onnx"))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: i.type.tensor_type for i in graph.graph.input}
    outputs = {o.name: o.type.tensor_type for o in graph.graph.output}
    assert set(inputs) == {"input_ids", "attention_mask"} and set(outputs) == {"tag_probs", "category_probs"}
    assert all(t.elem_type == onnx.TensorProto.INT64 for t in inputs.values())
    assert all(t.elem_type == onnx.TensorProto.FLOAT for t in outputs.values())
    for tensor in inputs.values():  # batch and sequence are symbolic
        assert all(d.dim_param for d in tensor.shape.dim)


def test_onnx_matches_torch_on_every_bucket_and_batch_size(tiny_model_dir: Path) -> None:
    report = json.loads((tiny_model_dir / "export.json").read_text())
    assert report["parity_max_abs_diff"] < 1e-4
    model = ProbabilityOutputs(load_model(tiny_model_dir)).eval()
    session = onnxruntime.InferenceSession(
        str(tiny_model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    for batch, width in ((1, 16), (5, 32), (3, 64)):
        input_ids = rng.integers(5, 200, size=(batch, width), dtype=np.int64)
        attention_mask = np.ones_like(input_ids)
        attention_mask[0, width // 2 :] = 0
        tag_probs, category_probs = session.run(
            None, {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        with torch.inference_mode():
            expected = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        assert tag_probs.shape[:2] == (batch, width) and category_probs.shape[0] == batch
        assert np.abs(tag_probs - expected[0].numpy()).max() < 1e-4
        assert np.abs(category_probs - expected[1].numpy()).max() < 1e-4
        np.testing.assert_allclose(tag_probs.sum(-1), 1.0, atol=1e-4)
