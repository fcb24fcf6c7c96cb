"""The tritonserver from the nvidia-pytriton wheel starts on CPU and serves a python-backend model over
gRPC; a model that fails to load stops the start at once with the server's own error."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from devtools.services.process import ServiceStartError
from devtools.services.triton import SHM_DIR, TritonServer

pytestmark = pytest.mark.services

_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
dynamic_batching {{ }}
"""

_ADD_ONE = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            output = pb_utils.Tensor("OUTPUT0", (values + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
"""

_BROKEN = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this model is broken on purpose")
"""


def _write_model(repository: Path, name: str, model_py: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(_CONFIG.format(name=name))
    (repository / name / "1" / "model.py").write_text(model_py)


def test_triton_serves_python_backend_model_over_grpc(
        tmp_path: Path, triton_factory: Callable[..., TritonServer]) -> None:
    _write_model(tmp_path, "add_one", _ADD_ONE)
    server = triton_factory(tmp_path)
    assert server.server_metadata()["version"] == "2.51.0"

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_model_ready("add_one")
        batch = np.arange(6, dtype=np.float32).reshape(2, 3)
        request = grpcclient.InferInput("INPUT0", list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        result = client.infer("add_one", [request]).as_numpy("OUTPUT0")
    finally:
        client.close()
    np.testing.assert_array_equal(result, batch + 1)
    assert _eventually_in_metrics(server, 'nv_inference_request_success{model="add_one",version="1"} 1')

    assert list(SHM_DIR.glob(f"{server.shm_prefix}*")), "python backend shm regions carry our prefix"
    server.stop()
    assert server.process is not None and not server.process.is_running()
    assert list(SHM_DIR.glob(f"{server.shm_prefix}*")) == []


def _eventually_in_metrics(server: TritonServer, line: str, wait_s: float = 30.0) -> bool:
    """Triton publishes counters asynchronously: poll the metrics endpoint for `line` (bounded)."""
    deadline = time.monotonic() + wait_s
    while True:
        with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
            if line in reply.read().decode():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def test_triton_start_fails_fast_with_the_load_error(
        tmp_path: Path, triton_factory: Callable[..., TritonServer]) -> None:
    _write_model(tmp_path, "broken", _BROKEN)
    with pytest.raises(ServiceStartError, match="this model is broken on purpose"):
        triton_factory(tmp_path, start_timeout_s=60)
