"""Inference backends behind one small interface: Triton over gRPC (production) and ONNX Runtime in-process.

Both take the padded ``input_ids``/``attention_mask`` (int64 [B,S]) and return the model's probabilities;
decoding happens afterwards in the worker with the same code for both. Backend outages surface as
:class:`BackendUnavailable` (retriable), anything else as a non-retriable :class:`InferenceFailed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from workers.backend_checks import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ModelFit,
    check_label_dims,
    check_triton_digest,
    check_triton_model_config,
)
from workers.contract.errors import (
    BackendUnavailable,
    ConfigError,
    EnrichError,
    InferenceFailed,
)

if TYPE_CHECKING:
    import onnxruntime
    from tritonclient.grpc.aio import InferenceServerClient

    from workers.runtime.config import BackendConfig
    from workers.runtime.metrics import WorkerMetrics

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "InferenceBackend",
    "InferenceFailed",
    "ModelFit",
    "ModelOutputs",
    "OnnxRuntimeBackend",
    "TritonBackend",
    "check_label_dims",
    "check_triton_digest",
    "check_triton_model_config",
    "make_backend",
]

log = logging.getLogger(__name__)

# gRPC codes meaning "the server is not there / not keeping up now": retry later, the batch is fine.
# NOT_FOUND is among them because Triton answers it while it unloads (graceful shutdown) or reloads the
# model; a wrong model name is caught once at start-up by check_model.
_RETRIABLE_GRPC_CODES = frozenset(
    f"StatusCode.{name}"
    for name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED", "NOT_FOUND")
)

_MAX_MESSAGE_BYTES = 2**31 - 1
# gRPC's default reconnect backoff grows to 120 s, so after an outage the worker could stay blocked for
# minutes after Triton is back; the circuit breaker already paces the retries, so reconnect briskly.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True)
class ModelOutputs:
    tag_probs: np.ndarray  # float32 [B,S,T]
    category_probs: np.ndarray  # float32 [B,C]


class InferenceBackend(Protocol):
    async def infer(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> ModelOutputs: ...

    async def is_ready(self) -> bool: ...

    async def check_model(self, fit: ModelFit) -> None:
        """Start-up check that the served model is there, is the model `expected_digest` names, fits the
        worker's batches (and, where its output shapes are fixed, the `(tags, categories)` of labels.json);
        raises BackendUnavailable (wait and retry) or ModelMismatch (a configuration error)."""
        ...

    async def close(self) -> None: ...


def _check_inputs(input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise InferenceFailed(
            f"input_ids and attention_mask must both be [B,S]; got {input_ids.shape}, {attention_mask.shape}"
        )
    if input_ids.shape[0] == 0:
        raise InferenceFailed("empty batch: the pipeline must not send a batch of 0 rows")


def _checked_outputs(tag_probs: Any, category_probs: Any, input_ids: np.ndarray) -> ModelOutputs:
    batch, seq = input_ids.shape
    if (
        not isinstance(tag_probs, np.ndarray)
        or not isinstance(category_probs, np.ndarray)
        or tag_probs.ndim != 3
        or tag_probs.shape[:2] != (batch, seq)
        or category_probs.ndim != 2
        or category_probs.shape[0] != batch
    ):
        shapes = (getattr(tag_probs, "shape", None), getattr(category_probs, "shape", None))
        raise InferenceFailed(f"model returned outputs of shapes {shapes} for inputs of shape {(batch, seq)}")
    return ModelOutputs(
        tag_probs=tag_probs.astype(np.float32, copy=False),
        category_probs=category_probs.astype(np.float32, copy=False),
    )


class TritonBackend:
    """Triton over gRPC asyncio, with at most ``max_in_flight`` requests outstanding at once.

    Several batches in flight keep Triton's dynamic batcher fed while the worker decodes and emits. The
    client is created on first use (inside the running event loop), or passed in as ``client``.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        max_in_flight: int,
        timeout_s: float,
        model_version: str = "",
        metrics: WorkerMetrics | None = None,
        client: InferenceServerClient | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        self._metrics = metrics
        self._client = client
        self._semaphore = asyncio.Semaphore(max_in_flight)

    def _get_client(self) -> InferenceServerClient:
        if self._client is None:
            from tritonclient.grpc.aio import InferenceServerClient

            self._client = InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
        return self._client

    async def infer(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> ModelOutputs:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        _check_inputs(input_ids, attention_mask)
        inputs = []
        for name, array in zip(INPUT_NAMES, (input_ids, attention_mask), strict=True):
            tensor = InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.int64))
            inputs.append(tensor)
        outputs = [InferRequestedOutput(name) for name in OUTPUT_NAMES]
        async with self._semaphore:
            started = time.perf_counter()
            result = await self._call(
                "infer",
                self._get_client().infer(
                    self.model_name,
                    inputs,
                    model_version=self.model_version,
                    outputs=outputs,
                    client_timeout=self.timeout_s,
                ),
            )
            if self._metrics is not None:
                self._metrics.inference_latency_s.observe(time.perf_counter() - started)
        return _checked_outputs(result.as_numpy("tag_probs"), result.as_numpy("category_probs"), input_ids)

    async def is_ready(self) -> bool:
        try:
            client = self._get_client()
            return bool(
                await client.is_server_live(client_timeout=self.timeout_s)
                and await client.is_model_ready(
                    self.model_name, self.model_version, client_timeout=self.timeout_s
                )
            )
        except Exception as exc:
            log.debug("triton not ready: %r", exc)
            return False

    async def check_model(self, fit: ModelFit) -> None:
        """Start-up check: server live, model ready, its digest the expected one, and the model config fits
        the worker's batches and labels.json.

        Raises :class:`BackendUnavailable` when the server or model is not up, and
        :class:`ModelMismatch` with a fix in the message when the config doesn't fit.
        """
        client = self._get_client()
        if not await self._call("is_server_live", client.is_server_live(client_timeout=self.timeout_s)):
            raise BackendUnavailable(f"Triton at {self.url} is not live")
        ready = await self._call(
            "is_model_ready",
            client.is_model_ready(self.model_name, self.model_version, client_timeout=self.timeout_s),
        )
        if not ready:
            raise BackendUnavailable(f"model {self.model_name!r} is not ready on Triton at {self.url}")
        response = await self._call(
            "get_model_config",
            client.get_model_config(
                self.model_name, self.model_version, as_json=True, client_timeout=self.timeout_s
            ),
        )
        config = response["config"]
        check_triton_model_config(config, batch_size=fit.batch_size, max_seq_len=fit.max_seq_len)
        if fit.digest is not None:
            check_triton_digest(config, self.model_version, fit.digest, self.url)
        dims = {entry["name"]: [int(d) for d in entry.get("dims", [])] for entry in config["output"]}
        check_label_dims(f"Triton model {self.model_name!r}", dims["tag_probs"], dims["category_probs"],
                         fit.label_counts)  # fmt: skip

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, what: str, awaitable: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return await awaitable
        except InferenceServerException as exc:
            self._count_failure()
            if exc.status() in _RETRIABLE_GRPC_CODES:
                raise BackendUnavailable(
                    f"Triton {what} at {self.url} failed: {exc.status()} {exc.message()}"
                ) from exc
            raise InferenceFailed(
                f"Triton {what} for model {self.model_name!r} failed: {exc.status()} {exc.message()}"
            ) from exc
        except (OSError, TimeoutError) as exc:
            self._count_failure()
            raise BackendUnavailable(f"Triton {what} at {self.url} failed: {exc!r}") from exc

    def _count_failure(self) -> None:
        if self._metrics is not None:
            self._metrics.backend_failures.inc()


class OnnxRuntimeBackend:
    """ONNX Runtime in this process; ``session.run`` runs in worker threads so the event loop stays free.

    ONNX Runtime releases the GIL while it computes, so ``max_concurrency`` threads with
    ``intra_op_threads`` each use up to their product in cores.
    """

    def __init__(
        self,
        onnx_path: Path,
        *,
        intra_op_threads: int = 1,
        max_concurrency: int = 1,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        import onnxruntime

        if not Path(onnx_path).is_file():
            raise ConfigError(
                f"the onnx backend's model {onnx_path} does not exist: set ENRICH_MODEL_DIR / --model-dir to "
                "an exported model (`enrich export`), or use ENRICH_BACKEND=triton"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self._session: onnxruntime.InferenceSession | None = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="ort")
        self._metrics = metrics
        self.onnx_path = Path(onnx_path)

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[Any]:
        if self._session is None:
            raise BackendUnavailable("ONNX Runtime backend is closed")
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        return self._session.run(list(OUTPUT_NAMES), feeds)

    async def infer(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> ModelOutputs:
        _check_inputs(input_ids, attention_mask)
        started = time.perf_counter()
        try:
            tag_probs, category_probs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, input_ids, attention_mask
            )
        except EnrichError:
            raise
        except Exception as exc:
            if self._session is None:  # closed while the call waited for a thread
                raise BackendUnavailable("ONNX Runtime backend is closed") from exc
            raise InferenceFailed(
                f"ONNX Runtime failed on a batch of shape {input_ids.shape}: {exc}"
            ) from exc
        if self._metrics is not None:
            self._metrics.inference_latency_s.observe(time.perf_counter() - started)
        return _checked_outputs(tag_probs, category_probs, input_ids)

    async def is_ready(self) -> bool:
        return self._session is not None

    async def check_model(self, fit: ModelFit) -> None:
        """The session loaded the model in `__init__` and takes dynamic batch and sequence shapes; its label
        dimensions are fixed by the export, so they must match labels.json. The digest was checked against
        this very model.onnx when the model directory was loaded."""
        if self._session is None:
            raise BackendUnavailable("ONNX Runtime backend is closed")
        shapes = {output.name: output.shape for output in self._session.get_outputs()}
        check_label_dims(str(self.onnx_path), shapes["tag_probs"][-1:], shapes["category_probs"][-1:],
                         fit.label_counts)  # fmt: skip

    async def close(self) -> None:
        self._session = None
        self._executor.shutdown(wait=True, cancel_futures=True)


def make_backend(
    config: BackendConfig, *, max_in_flight: int, metrics: WorkerMetrics | None = None
) -> TritonBackend | OnnxRuntimeBackend:
    """The backend ``config.kind`` names: ``triton`` (gRPC at ``triton_url``) or ``onnx`` (in-process).

    For ``onnx`` the model is ``config.model_dir / "model.onnx"`` and ``max_in_flight`` becomes the number
    of threads running the session; each uses ``config.intra_op_threads`` cores.
    """
    if config.kind == "triton":
        return TritonBackend(
            config.triton_url,
            config.triton_model,
            max_in_flight=max_in_flight,
            timeout_s=config.timeout_s,
            model_version=config.triton_version,
            metrics=metrics,
        )
    if config.kind == "onnx":
        if config.model_dir is None:
            raise ConfigError("the onnx backend needs a model directory (ENRICH_MODEL_DIR / --model-dir)")
        return OnnxRuntimeBackend(
            Path(config.model_dir) / "model.onnx",
            intra_op_threads=config.intra_op_threads,
            max_concurrency=max_in_flight,
            metrics=metrics,
        )
    raise ValueError(f"unknown backend kind {config.kind!r}; expected 'triton' or 'onnx'")
