"""Dead-letter stage: a record that failed validation goes to the DLQ topic with its reason, never dropped.

The record's offset finishes only when the dead-letter record is acknowledged, like any other output.
"""

from __future__ import annotations

import logging
from functools import partial

from workers.contract.errors import ValidationFailed
from workers.contract.events import (
    REDRIVE_ATTEMPT_HEADER,
    SourceRecord,
    dead_letter_event,
    dead_letter_key,
    redrive_attempt,
)
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.producer import AsyncProducer
from workers.stages.commit import OffsetTracker

__all__ = ["DeadLetterWriter"]

log = logging.getLogger(__name__)


class DeadLetterWriter:
    def __init__(
        self, *, topic: str, worker_id: str, producer: AsyncProducer, tracker: OffsetTracker,
        metrics: WorkerMetrics,
    ) -> None:  # fmt: skip
        self._topic, self._worker_id = topic, worker_id
        self._producer, self._tracker, self._metrics = producer, tracker, metrics

    async def write(
        self, source: SourceRecord, value: bytes | None, exc: ValidationFailed, epoch: int,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:  # fmt: skip
        """`epoch`: the offset tracker's when `source` was consumed; a record of an older one is read
        again from its committed offset, so it is not written (nor its offset finished). `headers`: the
        record's, for its redrive attempt (see `workers.redrive`)."""
        tracker = self._tracker
        if epoch != tracker.epoch:
            return
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            source.topic,
            source.partition,
            source.offset,
            exc,
            extra={"code": exc.code, "partition": source.partition, "offset": source.offset},
        )
        self._metrics.dlq.labels(code=exc.code).inc()
        attempt = redrive_attempt(headers)
        record = dead_letter_event(source, value, exc.code, exc.message, self._worker_id, attempt)
        await self._producer.produce(
            self._topic,
            dead_letter_key(source.key),
            record,
            on_delivered=partial(tracker.finish, (source.topic, source.partition), source.offset, epoch),
            headers=[("error_code", exc.code.encode()), (REDRIVE_ATTEMPT_HEADER, str(attempt).encode())],
            current=lambda: tracker.epoch == epoch,
        )
