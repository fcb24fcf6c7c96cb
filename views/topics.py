"""The views' own topics, created (and seen in the cluster's metadata) before the Faust worker starts.

Faust creates its internal topics itself, but its consumer joins the group at the same moment: a leader
whose metadata does not show a just-created topic yet assigns none of its partitions ("Ignoring missing
topic", faust/assignor/partition_assignor.py) and, with aiokafka's 5-minute metadata age, the counts agent
then read nothing for minutes (the views test saw an empty counts table 1 run in 10). Creating them first,
with the configuration Faust would give them, leaves Faust nothing to create."""

from __future__ import annotations

import time
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from workers.contract.errors import KafkaOperationFailed
from workers.runtime.kafka_security import client_config

__all__ = ["declare_topics", "views_topics"]

_COMPACT = {"cleanup.policy": "compact"}


def views_topics(app_id: str, latest_topic: str, tables: tuple[str, ...]) -> dict[str, Mapping[str, str]]:
    """Topic name -> configuration: the compacted output, the category deltas, one changelog per table."""
    return {latest_topic: _COMPACT, f"{app_id}-category-deltas": {},
            **{f"{app_id}-{table}-changelog": _COMPACT for table in tables}}  # fmt: skip


def declare_topics(bootstrap: str, properties: Mapping[str, str], topics: Mapping[str, Mapping[str, str]],
                   partitions: int, replication_factor: int, timeout_s: float = 30.0) -> None:
    """Create the missing ones, then wait until the metadata shows every partition of each with a leader."""
    admin = AdminClient(client_config(bootstrap, {"log_level": 0}, properties))
    new = [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                    config=dict(config)) for name, config in topics.items()]  # fmt: skip
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaOperationFailed(f"create topic {name}", exc.args[0].str()) from None
    deadline = time.monotonic() + timeout_s
    waiting = set(topics)
    while waiting:
        metadata = admin.list_topics(timeout=timeout_s).topics
        waiting = {name for name in waiting if not _ready(metadata.get(name))}
        if waiting and time.monotonic() > deadline:
            raise KafkaOperationFailed("create topics", f"{sorted(waiting)}: no leader in {timeout_s:.0f}s")
        if waiting:
            time.sleep(0.1)


def _ready(metadata: object) -> bool:
    partitions = getattr(metadata, "partitions", None)
    return bool(partitions) and getattr(metadata, "error", None) is None and all(
        p.leader >= 0 for p in partitions.values())  # fmt: skip
