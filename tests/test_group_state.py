"""The chaos harness's view of a consumer group (aiokafka admin, not librdkafka's: issue #4605 aborts)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka.errors import KafkaError
from confluent_kafka import Consumer

from devtools.reliability.group_state import GroupState, GroupWatcher, aiokafka_security
from devtools.services.kafka import KafkaCluster

_WAIT_S = 30.0


def _member(kafka: KafkaCluster, group: str, topic: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    return consumer


def _describe(watcher: GroupWatcher, group: str) -> GroupState:
    try:
        return watcher.describe(group)
    except KafkaError:  # no coordinator yet for a group nobody joined: as the harness, ask again
        return GroupState("Unknown", ())


def _wait_for(watcher: GroupWatcher, group: str, members: int, consumers: list[Consumer]) -> GroupState:
    deadline = time.monotonic() + _WAIT_S
    state = _describe(watcher, group)
    while not state.settled_with(members) and time.monotonic() < deadline:
        for consumer in consumers:
            consumer.poll(0.2)
        state = _describe(watcher, group)
    return state


def test_watcher_sees_members_join_and_leave_with_their_partitions(kafka: KafkaCluster,
                                                                  new_topic: Callable[..., str]) -> None:
    topic, group = new_topic(partitions=4), f"g-{uuid.uuid4().hex}"
    watcher = GroupWatcher(kafka.bootstrap_servers)
    assert not _describe(watcher, group).settled_with(1)  # no member yet
    first = _member(kafka, group, topic)
    second = None
    try:
        assert _wait_for(watcher, group, 1, [first]).partitions_per_member == (4,)
        second = _member(kafka, group, topic)  # joins in librdkafka's background thread
        state = _wait_for(watcher, group, 2, [first, second])
        assert state.settled_with(2) and sum(state.partitions_per_member) == 4
        second.close()
        second = None
        assert _wait_for(watcher, group, 1, [first]).partitions_per_member == (4,)
    finally:
        first.close()
        watcher.close()
        if second is not None:
            second.close()


def test_settled_needs_stable_state_the_count_and_partitions_for_each() -> None:
    assert GroupState("Stable", (2, 2)).settled_with(2)
    assert not GroupState("Stable", (4, 0)).settled_with(2)
    assert not GroupState("PreparingRebalance", (2, 2)).settled_with(2)
    assert not GroupState("Stable", (4,)).settled_with(2)


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SSL", "PLAINTEXT"])
def test_security_properties_become_aiokafka_arguments(protocol: str) -> None:
    kwargs = aiokafka_security({"security.protocol": protocol, "sasl.mechanism": "SCRAM-SHA-512",
                                "sasl.username": "u", "sasl.password": "p"})
    assert kwargs["security_protocol"] == protocol
    assert ("ssl_context" in kwargs) == (protocol != "PLAINTEXT")
    assert kwargs.get("sasl_plain_password") == ("p" if protocol == "SASL_SSL" else None)
