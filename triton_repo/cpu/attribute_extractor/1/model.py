"""Triton python-backend model: ONNX Runtime on CPU, one run per batch of requests.

The dynamic batcher hands over several requests at once; they are concatenated (padded to the widest
sequence, with attention_mask 0 on the padding), run through ONNX Runtime once, and the outputs are split
back per request. A malformed request gets an error response of its own; the others are still answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("tag_probs", "category_probs")


class BadRequest(ValueError):
    pass


def _read_inputs(request: Any) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name in INPUTS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise BadRequest(f"missing input {name!r}")
        array = tensor.as_numpy()
        if array.ndim != 2 or array.dtype != np.int64:
            raise BadRequest(f"{name} must be int64 [batch, seq], got {array.dtype} {list(array.shape)}")
        arrays.append(array)
    input_ids, attention_mask = arrays
    if input_ids.shape != attention_mask.shape:
        raise BadRequest(
            f"input_ids {list(input_ids.shape)} and attention_mask {list(attention_mask.shape)} differ"
        )
    if input_ids.shape[1] < 1:
        raise BadRequest("empty sequence")
    return input_ids, attention_mask


def _concatenate(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(ids.shape[1] for ids, _ in parts)
    rows = sum(ids.shape[0] for ids, _ in parts)
    input_ids = np.zeros((rows, width), dtype=np.int64)
    attention_mask = np.zeros((rows, width), dtype=np.int64)
    row = 0
    for ids, mask in parts:
        input_ids[row : row + ids.shape[0], : ids.shape[1]] = ids
        attention_mask[row : row + ids.shape[0], : ids.shape[1]] = mask
        row += ids.shape[0]
    return input_ids, attention_mask


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        onnx_path = version_dir / "model.onnx"
        if not onnx_path.is_file():
            raise pb_utils.TritonModelException(f"{onnx_path} is missing: run `enrich export` first")
        threads = int(config.get("parameters", {}).get("intra_op_num_threads", {}).get("string_value", "1"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        info_path = version_dir / "model_info.json"
        # Longer sequences than the largest bucket would exceed what the model was exported and tested for.
        self.max_seq = max(json.loads(info_path.read_text())["seq_buckets"]) if info_path.is_file() else None

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, np.ndarray, np.ndarray]] = []
        for index, request in enumerate(requests):
            try:
                input_ids, attention_mask = _read_inputs(request)
                if self.max_seq is not None and input_ids.shape[1] > self.max_seq:
                    raise BadRequest(
                        f"sequence length {input_ids.shape[1]} exceeds the largest bucket {self.max_seq}"
                    )
                good.append((index, input_ids, attention_mask))
            except BadRequest as exc:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"bad request: {exc}")
                )
        if good:
            self._run(good, responses)
        return responses

    def _run(self, good: list[tuple[int, np.ndarray, np.ndarray]], responses: list[Any]) -> None:
        input_ids, attention_mask = _concatenate([(ids, mask) for _, ids, mask in good])
        try:
            tag_probs, category_probs = self.session.run(
                list(OUTPUTS), {"input_ids": input_ids, "attention_mask": attention_mask}
            )
        except Exception as exc:  # ORT failure: every request of this run gets the error, none is lost
            for index, _, _ in good:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"inference failed: {exc}")
                )
            return
        row = 0
        for index, ids, _ in good:
            rows, width = ids.shape
            outputs = [
                pb_utils.Tensor("tag_probs", np.ascontiguousarray(tag_probs[row : row + rows, :width])),
                pb_utils.Tensor("category_probs", np.ascontiguousarray(category_probs[row : row + rows])),
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
            row += rows

    def finalize(self) -> None:
        self.session = None
