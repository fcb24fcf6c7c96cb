"""The worker's side of `enrich rollout shadow|canary|rollback`: keeps the worker's candidate (`StreamWorker.
trial`) on the group's `CandidateModel` from the control topic (`ModelFollower` reads the topic and calls
`apply` after each poll).

A new candidate is prepared like a hot swap's model (`prepare_serving`: loaded, its backend checked, one
probe inference) off the stream; it becomes the trial between batches (`StreamWorker.between_batches`), so a
canary's open micro-batches finish on the model that tokenized them. A candidate whose digest is the
desired model's is no trial (after `promote`, until the candidate record is gone). A candidate that cannot
be prepared is refused until another is set, and reported (`trial_error`); the worker keeps what it ran.
The old candidate's backend is closed after its last batch and its last shadow task.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from workers.contract.errors import EnrichError
from workers.runtime.control import CandidateModel
from workers.runtime.model_swap import prepare_serving
from workers.runtime.shadow import ShadowRunner, TrialMetrics
from workers.stages.trial import CANARY, SHADOW, Trial

if TYPE_CHECKING:
    from workers.runtime.config import WorkerConfig
    from workers.runtime.worker import StreamWorker

__all__ = ["TrialFollower"]

log = logging.getLogger(__name__)


class TrialFollower:
    def __init__(self, worker: StreamWorker, config: WorkerConfig) -> None:
        self.worker, self.config = worker, config
        self.metrics = TrialMetrics(worker.metrics.registry)
        self.desired: CandidateModel | None = None  # what the control topic asks for (set by ModelFollower)
        self.error = ""
        self._applied: CandidateModel | None = None  # what `worker.trial` stands for
        self._refused: CandidateModel | None = None
        self._runner: ShadowRunner | None = None

    def wanted(self) -> CandidateModel | None:
        desired = self.desired
        if desired is None or desired.mode not in (SHADOW, CANARY):
            return None
        return None if desired.digest == self.worker.serving.digest else desired

    async def apply(self) -> bool:
        """Bring the worker's trial in line with the wanted candidate; whether anything changed (report)."""
        want = self.wanted()
        if want == self._applied or (want is not None and want == self._refused):
            return False
        old, old_runner = self.worker.trial, self._runner
        try:
            trial, runner = await self._build(want, old) if want is not None else (None, None)
        except (EnrichError, OSError, ValueError, KeyError) as exc:
            self._refused, self.error = want, f"{type(exc).__name__}: {exc}"
            log.error("candidate %s refused; the trial stays as it was: %s", want.digest[:19] if want else "",
                      self.error)  # fmt: skip
            return True
        await self.worker.between_batches(partial(setattr, self.worker, "trial", trial))
        self._applied, self._runner, self.error = want, runner, ""
        log.info("trial now: %s", trial.describe if trial is not None else "none")
        if old_runner is not None:
            await old_runner.close()
        if old is not None and (trial is None or trial.serving is not old.serving):
            try:
                await old.serving.wait_idle()
            finally:  # also when cancelled at shutdown meanwhile
                await old.serving.backend.close()
        return True

    async def _build(self, want: CandidateModel, old: Trial | None) -> tuple[Trial, ShadowRunner | None]:
        worker, config = self.worker, self.config
        if old is not None and old.serving.digest == want.digest:  # only the mode or the share changed
            serving = old.serving
        else:
            serving = await prepare_serving(worker, config, want, worker.serving)
        runner = None
        if want.mode == SHADOW:
            kafka = config.kafka
            runner = ShadowRunner(
                candidate=serving, fraction=want.fraction, topic=kafka.shadow_topic, group=kafka.group_id,
                worker_id=worker.worker_id, bootstrap=kafka.bootstrap_servers, properties=kafka.properties,
                metrics=self.metrics, max_in_flight=config.batch.max_in_flight,
                max_batch=config.batch.max_batch,
            )  # fmt: skip
        routed = self.metrics.canary.labels(serving.digest).inc
        return Trial(want.mode, want.fraction, serving, on_routed=routed,
                     shadow=runner.observe if runner is not None else None), runner  # fmt: skip

    async def close(self) -> None:
        """At shutdown: no trial any more (between batches), its backend closed after its last batch."""
        self.desired = None
        await self.apply()
