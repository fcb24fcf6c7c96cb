"""Consumer lag per assigned partition, asked of the broker by a probe consumer of its own.

Lag is counted from the group's committed offset (what a restarted or new owner resumes from, and what
KEDA's kafka scaler counts: records consumed but unfinished are still lag) to the high watermark asked of
the broker, not librdkafka's cached one (a paused partition is not fetched, so its cached watermark froze
at the pause while the backlog grew behind it).

Why a consumer of its own rather than the worker's: confluent-kafka lets one thread into a consumer at a
time, so a query there held up consume(); and a broker answers one request per connection at a time, so
a list-offsets request sent on the connection the worker fetches on waited behind its long-polling fetch
(fetch.wait.max.ms, 500 ms) — 2 s per measurement with 4 partitions, during which intake stood still
(found in the bench's cache-hit pass). The probe never subscribes and never fetches: its requests have
connections to themselves, and it runs on its own thread; nobody waits for it but the lag gauge.
Not librdkafka's AdminClient: its group calls abort the process when the coordinator's broker dies
mid-request (librdkafka #4605; see devtools/reliability/group_state.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from workers.stages.consume import make_consumer

if TYPE_CHECKING:
    from workers.runtime.config import KafkaConfig

__all__ = ["LagProbe"]

log = logging.getLogger(__name__)

# Per broker request, and for one whole measurement: with the broker away the probe gives up, the gauge
# keeps its last values, and the next measurement tries again.
_QUERY_TIMEOUT_S = 2.0
_MEASUREMENT_BUDGET_S = 4.0


class LagProbe:
    """`lag(partitions)`: committed offset → high watermark per partition; None when the broker did not
    answer in time. A consumer of `kafka`'s group, bootstrap and security settings, named `client_id`."""

    def __init__(self, kafka: KafkaConfig, client_id: str) -> None:
        self._kafka, self._client_id = kafka, client_id
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kafka-lag")
        self._consumer: Any = None
        self._closed = False

    async def lag(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        if not partitions or self._closed:
            return {}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._measure, list(partitions))

    def _measure(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        from confluent_kafka import KafkaException, TopicPartition

        if self._closed:
            return {}
        if self._consumer is None:
            # log_level 0: the worker's consumer already logs an unreachable broker, and the probe's
            # failures show as a gauge that keeps its last values.
            self._consumer = make_consumer(self._kafka, self._client_id, extra={"log_level": 0})
        deadline = time.monotonic() + _MEASUREMENT_BUDGET_S
        try:
            committed = self._consumer.committed(
                [TopicPartition(t, p) for t, p in partitions], timeout=_QUERY_TIMEOUT_S
            )
            lags: dict[tuple[str, int], int] = {}
            for tp in committed:
                if time.monotonic() >= deadline:
                    return None
                low, high = self._consumer.get_watermark_offsets(tp, timeout=_QUERY_TIMEOUT_S, cached=False)
                # Never committed: everything from the earliest offset (auto.offset.reset=earliest) is owed.
                lags[(tp.topic, tp.partition)] = max(0, high - (tp.offset if tp.offset >= 0 else low))
        except KafkaException as exc:
            log.debug("lag not measured: %s", exc)
            return None
        return lags

    async def close(self) -> None:
        """Close the probe's consumer after the measurement in progress, if any, and stop its thread."""
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
