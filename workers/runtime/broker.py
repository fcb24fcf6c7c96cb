"""Is the Kafka broker there: the start-up check (fail fast with an exit code) and, once running, the
reachability that /readyz reports (wait and retry, never exit, never drop).

Before this check a wrong `ENRICH_KAFKA_BOOTSTRAP` left the worker (and `enrich tail`) silently retrying
for as long as it ran: librdkafka reconnects forever and a consumer with no broker simply reads nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from workers.contract.errors import ServiceUnreachable, TopicMissing
from workers.runtime.kafka_security import security_error

__all__ = ["BOOTSTRAP_SETTING", "BrokerHealth", "admin_settings", "check_kafka"]

log = logging.getLogger(__name__)

BOOTSTRAP_SETTING = "ENRICH_KAFKA_BOOTSTRAP / --kafka-bootstrap"

# Properties only a consumer or a producer knows: an AdminClient warns about each (and rejects the Python
# callbacks), so the check keeps the rest: bootstrap servers, client id, and every security property.
_CLIENT_ONLY = frozenset({
    "group.id", "group.instance.id", "partition.assignment.strategy", "enable.auto.commit",
    "enable.auto.offset.store", "auto.offset.reset", "session.timeout.ms", "heartbeat.interval.ms",
    "isolation.level", "enable.partition.eof", "max.poll.interval.ms", "fetch.min.bytes",
    "enable.idempotence", "acks", "linger.ms", "compression.type", "transactional.id",
    "transaction.timeout.ms", "message.timeout.ms", "statistics.interval.ms",
})  # fmt: skip

def admin_settings(client_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The connection and security properties of a consumer's or producer's settings."""
    return {k: v for k, v in client_settings.items() if k not in _CLIENT_ONLY and not callable(v)}


def check_kafka(
    client_settings: Mapping[str, Any], topics: Mapping[str, str] | Sequence[str], *, timeout_s: float
) -> dict[str, int]:
    """Partitions per topic, once the broker answers and every topic exists.

    `topics` maps each topic to the setting that names it (for the message). Raises ServiceUnreachable
    when no broker answers within `timeout_s` (librdkafka keeps reconnecting meanwhile, so a broker that
    is still starting is waited for), ConfigError when it refuses our credentials or certificate, and
    TopicMissing when a topic does not exist: topics are never auto-created (listing all topics, rather
    than asking for each, keeps a broker with auto-create on from creating them here).
    """
    settings = admin_settings(client_settings)
    bootstrap = settings.get("bootstrap.servers", "?")
    errors: list[KafkaError] = []
    # log_level 0: the reconnect lines would bury the one-line message; the last error goes into it.
    admin = AdminClient({**settings, "log_level": 0, "error_cb": errors.append})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # serve the queued error callbacks: they say why (refused, unresolvable, TLS, SASL)
        last = errors[-1] if errors else exc.args[0]
        # A refused credential or certificate: no amount of waiting fixes the settings.
        if isinstance(last, KafkaError) and (refused := security_error(last.code(), last.str())) is not None:
            raise refused from None
        detail = last.str() if isinstance(last, KafkaError) else str(last)
        raise ServiceUnreachable(
            f"Kafka at {bootstrap} did not answer within {timeout_s:g} s ({detail}): "
            f"check {BOOTSTRAP_SETTING}"
        ) from None
    named = topics if isinstance(topics, Mapping) else dict.fromkeys(topics, "--topic")
    missing = [f"{topic!r} ({setting})" for topic, setting in named.items() if topic not in metadata.topics]
    if missing:
        raise TopicMissing(
            f"Kafka at {bootstrap} has no topic {', '.join(missing)}: create it (topics are not "
            "auto-created) or fix the setting"
        )
    return {topic: len(metadata.topics[topic].partitions) for topic in named}


class BrokerHealth:
    """Whether the worker's consumer reaches a broker now, from librdkafka's own reports.

    Down when the error callback says all brokers are down; up again when the statistics (every
    `interval_ms`) show a broker connection in state UP, or a record arrives. The callbacks run on the
    consume thread (inside consume()); the /readyz thread only reads the flag.
    """

    def __init__(self, interval_ms: int = 1000) -> None:
        self.interval_ms = interval_ms
        self._reachable = True  # the start-up check has just reached it
        self._lock = threading.Lock()

    @property
    def reachable(self) -> bool:
        return self._reachable

    def client_settings(self) -> dict[str, Any]:
        """The librdkafka properties that feed this tracker; merge them into the consumer's settings."""
        return {
            "error_cb": self.on_error,
            "stats_cb": self.on_stats,
            "statistics.interval.ms": self.interval_ms,
        }

    def on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._set(False, error.str())
        elif error.code() == KafkaError._TRANSPORT:
            # One connection dropped (librdkafka reconnects); in a cluster others may still serve.
            log.debug("kafka connection failed (retried): %s", error.str())
        else:
            log.warning("kafka client error (retried): %s", error.str())

    def on_stats(self, text: str) -> None:
        brokers = orjson.loads(text).get("brokers", {})
        self._set(any(b.get("state") == "UP" for b in brokers.values()), "no broker connection is up")

    def saw_traffic(self) -> None:
        self._set(True, "")

    def _set(self, reachable: bool, why: str) -> None:
        with self._lock:
            if reachable == self._reachable:
                return
            self._reachable = reachable
        if reachable:
            log.info("kafka reachable again")
        else:
            log.warning("kafka unreachable (waiting and retrying, not ready): %s", why)
