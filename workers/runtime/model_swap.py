"""Hot swap: the worker follows the desired model of its group on the control topic, without a restart.

`ModelFollower.run` reads the control topic (`workers.runtime.control`) from the beginning, then follows
it. When the group's desired digest is not the one in force, it prepares the new model off the event
loop (tokenizer and label maps; an ONNX Runtime session from the new directory, or a Triton backend that
calls the version the record names), checks it against the backend like the start-up check does
(`check_serving`: Triton's recorded digest for that version, one probe inference whose output widths must
fit the label maps), then switches between batches (`StreamWorker.between_batches`): batches already
launched finish on the old model, the open micro-batches are launched on the old model first, and new
ones are tokenized, cached and emitted with the new one. The old backend is closed after its last batch.

A failed swap (model not found, digest or label mismatch, backend refusing) is logged, counted in
`enrich_model_swaps_total{outcome="failed"}` and reported; the worker keeps its model. A backend that is
only unreachable is tried again at the next report; a model that does not fit is not, until another
desired model is set. The worker reports (`WorkerReport`) at start, after each attempt and every
ENRICH_CONTROL_REPORT_S; after a swap only once the old model's last batch is done, so `enrich rollout
set` never unloads a Triton version a batch may still call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from functools import partial
from typing import TYPE_CHECKING

from workers.backends import InferenceBackend, ModelFit, TritonBackend, make_backend
from workers.contract.errors import BackendUnavailable, EnrichError, ModelMismatch
from workers.model.served import ServedModel, check_output_dims, find_model_dir
from workers.runtime.control import (
    CandidateModel,
    ControlReader,
    ControlWriter,
    DesiredModel,
    WorkerReport,
    candidate_key,
    utc_now,
)
from workers.stages.serving import Serving

if TYPE_CHECKING:
    from workers.runtime.config import WorkerConfig
    from workers.runtime.trial_follow import TrialFollower
    from workers.runtime.worker import StreamWorker

__all__ = ["ModelFollower", "check_serving", "pin_triton_version", "prepare_serving"]

log = logging.getLogger(__name__)

_POLL_S = 0.5  # one blocking consume() of the control reader, in a thread


async def check_serving(model: ServedModel, backend: InferenceBackend, *, max_batch: int, where: str) -> None:
    """The backend serves `model`: its own check (Triton: live, ready, config fits, digest recorded for
    the version called), then one probe inference whose output widths must be the label maps' sizes.
    BackendUnavailable: try again later; ModelMismatch: this model cannot be served this way."""
    labels = model.labels
    await backend.check_model(ModelFit(
        max_batch, model.encoder.seq_buckets[-1], model.digest, (len(labels.tags), len(labels.categories))
    ))  # fmt: skip
    input_ids, attention_mask = model.encoder.pad_to_bucket(model.encoder.encode(["probe"]))
    outputs = await backend.infer(input_ids, attention_mask)
    check_output_dims(model.labels, outputs.tag_probs.shape[-1], outputs.category_probs.shape[-1], where)


async def pin_triton_version(backend: InferenceBackend, digest: str) -> str:
    """Triton called as "the newest version": pin it to the newest version whose recorded digest
    (`model_digest_v<N>`) is `digest`, and return it; "" when not Triton, already pinned, or none recorded."""
    if not isinstance(backend, TritonBackend) or backend.model_version:
        return backend.model_version if isinstance(backend, TritonBackend) else ""
    client = backend._get_client()  # the backend's own client and error mapping (backends.py is at its cap)
    response = await backend._call("get_model_config", client.get_model_config(
        backend.model_name, "", as_json=True, client_timeout=backend.timeout_s))  # fmt: skip
    parameters = response["config"].get("parameters", {})
    versions = [
        key.removeprefix("model_digest_v") for key, value in parameters.items()
        if key.startswith("model_digest_v") and value.get("string_value") == digest
    ]  # fmt: skip
    if versions:
        backend.model_version = max(versions, key=int)
        log.info("Triton model %s: calling version %s (%s)", backend.model_name, backend.model_version,
                 digest[:19])  # fmt: skip
    return backend.model_version


class ModelFollower:
    """Keeps one worker on its group's desired model; `run` is the worker's control task."""

    def __init__(
        self, worker: StreamWorker, config: WorkerConfig, trials: TrialFollower | None = None
    ) -> None:
        self.worker, self.config, self.trials = worker, config, trials  # trials: shadow and canary
        self.group, self.topic = config.kafka.group_id, config.kafka.control_topic
        self.since = utc_now()
        self.swaps = self.failed_swaps = 0
        self.last_error = ""
        self._desired: DesiredModel | None = None
        self._refused: DesiredModel | None = None  # does not fit: not tried again until another is set
        self._last_tried: DesiredModel | None = None  # unreachable backend: tried again at each report
        self._writer: ControlWriter | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the control topic until `stop`; a missing topic is looked for again every report."""
        if not self.topic:
            return
        reader = ControlReader(self.config.kafka.bootstrap_servers, self.topic, self.config.kafka.properties)
        report_s = self.config.kafka.control_report_s
        try:
            warned = False
            while not await asyncio.to_thread(reader.exists):
                if not warned:
                    log.warning("control topic %s does not exist: no hot swap until it is created "
                                "(compacted; `enrich rollout` needs it)", self.topic)
                    warned = True
                if await _stopped(stop, report_s):
                    return
            # The current state first (to the end offsets): acting on the first records of a pass could swap
            # to a desired model that a later record (a rollback) already replaced.
            state = await asyncio.to_thread(reader.read_all)
            desired, candidate = state.get(self.group), state.get(candidate_key(self.group))
            self._desired = desired if isinstance(desired, DesiredModel) else None
            if self.trials is not None:
                self.trials.desired = candidate if isinstance(candidate, CandidateModel) else None
            kafka = self.config.kafka
            self._writer = ControlWriter(kafka.bootstrap_servers, self.topic, kafka.properties)
            self.report()
            next_report = time.monotonic() + report_s
            while not stop.is_set():
                for key, record in await asyncio.to_thread(reader.poll, _POLL_S):
                    if key == self.group:
                        self._desired = record if isinstance(record, DesiredModel) else None
                    elif self.trials is not None and key == candidate_key(self.group):
                        self.trials.desired = record if isinstance(record, CandidateModel) else None
                due = time.monotonic() >= next_report
                if self._wants_swap(retry=due):
                    await self.swap(self._desired)  # type: ignore[arg-type]
                    next_report = time.monotonic() + report_s
                elif due:
                    self.report()
                    next_report = time.monotonic() + report_s
                if self.trials is not None and await self.trials.apply():
                    self.report()
        finally:
            if self.trials is not None:
                await self.trials.close()  # between batches, like any trial change
            await asyncio.to_thread(reader.close)
            writer, self._writer = self._writer, None
            if writer is not None:
                await asyncio.to_thread(writer.close)  # flushes the last report

    def _wants_swap(self, *, retry: bool) -> bool:
        desired = self._desired
        if desired is None or desired.digest == self.worker.serving.digest or desired == self._refused:
            return False
        return retry or desired != self._last_tried

    async def swap(self, desired: DesiredModel) -> bool:
        """Prepare `desired`, switch to it between batches, close the old backend after its last batch."""
        self._last_tried = desired
        old = self.worker.serving
        started = time.monotonic()
        preparing = self.worker.metrics.model_swap_preparing
        preparing.set(1)
        try:
            serving = await self._prepare(desired, old)
        except (EnrichError, OSError, ValueError, KeyError) as exc:
            self.failed_swaps += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.worker.metrics.model_swaps.labels(outcome="failed").inc()
            if not isinstance(exc, BackendUnavailable):
                self._refused = desired
            log.error("model swap to %s failed; keeping %s: %s", desired.digest[:19], old.model.short_digest,
                      self.last_error)  # fmt: skip
            self.report()
            return False
        finally:  # also when the follower is cancelled at shutdown meanwhile
            preparing.set(0)
        prepared = time.monotonic()
        await self.worker.between_batches(partial(setattr, self.worker, "serving", serving))
        switched = time.monotonic()
        info = self.worker.metrics.model_info
        info.labels(name=serving.model.name, version=serving.model.version, digest=serving.digest).set(1)
        info.remove(old.model.name, old.model.version, old.digest)
        self.worker.metrics.model_swaps.labels(outcome="done").inc()
        self.swaps += 1
        self.since, self.last_error = utc_now(), ""
        try:
            await old.wait_idle()
        finally:  # also when the follower is cancelled at shutdown meanwhile
            await old.backend.close()  # the cache's Redis client is shared with the new model: kept
        log.info("model swapped %s -> %s (prepared in %.3fs, switched %.3fs later; old model's last batch "
                 "%.3fs after the switch)", old.model.short_digest, serving.model.short_digest,
                 prepared - started, switched - prepared, time.monotonic() - switched)  # fmt: skip
        self.report()
        return True

    async def _prepare(self, desired: DesiredModel, current: Serving) -> Serving:
        return await prepare_serving(self.worker, self.config, desired, current)

    def report(self) -> None:
        """Publish what this worker runs (queued; delivery is the producer's business)."""
        if self._writer is None:
            return
        serving, trials = self.worker.serving, self.trials
        self._writer.send(WorkerReport(
            group=self.group, worker_id=self.worker.worker_id, digest=serving.digest,
            name=serving.model.name, version=serving.model.version, triton_version=serving.triton_version,
            since=self.since, swaps=self.swaps, failed_swaps=self.failed_swaps, last_error=self.last_error,
            reported_at=utc_now(), trial=self.worker.trial.describe if self.worker.trial is not None else "",
            trial_error=trials.error if trials is not None else "",
        ))  # fmt: skip


async def prepare_serving(
    worker: StreamWorker, config: WorkerConfig, desired: DesiredModel | CandidateModel, current: Serving
) -> Serving:
    """The `Serving` of a model named on the control topic, loaded and checked against its backend; its
    results are cached under its own digest (the cache's Redis client is shared with `current`)."""
    model_dir = await asyncio.to_thread(  # may hash a directory that records no digest: off the loop
        find_model_dir, desired.digest, desired.model_dir or None, config.backend.model_store
    )
    model = await asyncio.to_thread(ServedModel.load, model_dir)
    if model.digest != desired.digest:
        raise ModelMismatch(f"{model_dir} is {model.short_digest}, not the desired {desired.digest}")
    version = desired.triton_version if config.backend.kind == "triton" else ""
    backend_config = dataclasses.replace(config.backend, model_dir=model_dir, triton_version=version)
    backend = await asyncio.to_thread(
        make_backend, backend_config, max_in_flight=config.batch.max_in_flight,
        metrics=worker.metrics,
    )
    try:
        where = f"the new model ({config.backend.kind}{' version ' + version if version else ''})"
        await check_serving(model, backend, max_batch=config.batch.max_batch, where=where)
        # As at start: call the version holding this model, never "the newest" a later rollout loads.
        version = version or await pin_triton_version(backend, model.digest)
    except BaseException:
        await backend.close()
        raise
    return Serving(model, backend, current.cache.for_model(model.digest), version)


async def _stopped(stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `stop`; whether it is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
