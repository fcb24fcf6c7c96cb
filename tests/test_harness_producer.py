"""The harness's PacedProducer on a real broker: every record it takes is placed or failed, never gone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devtools.harness.listings import OUTPUT, Expected, Record, valid_listings
from devtools.harness.producer import PRODUCER_MAX_BYTES, PacedProducer
from devtools.services.kafka import KafkaCluster

pytestmark = pytest.mark.services


def test_a_record_the_broker_or_the_client_refuses_is_counted_as_failed(
    kafka: KafkaCluster, new_topic: Callable[..., str]
) -> None:
    topic = new_topic()  # the broker's default max.message.bytes: 1 MB
    good = list(valid_listings(4, prefix="P"))
    too_big_for_topic = Record(b"P-big", b"x" * (2 * 1024 * 1024),
                               Expected("P-big", "valid", frozenset({OUTPUT})))  # fmt: skip
    # Over the producer's own message.max.bytes: produce() raises instead of queueing it.
    too_big_for_client = Record(b"P-huge", b"x" * (PRODUCER_MAX_BYTES + 1),
                                Expected("P-huge", "valid", frozenset({OUTPUT})))  # fmt: skip
    records = [good[0], too_big_for_topic, good[1], too_big_for_client, good[2], good[3]]

    producer = PacedProducer(kafka.bootstrap_servers, topic, records, rate=0).start()

    assert producer.wait(60)
    assert producer.produced == 6
    assert sorted(e.label for e in producer.snapshot().values()) == ["P-0000000", "P-0000001", "P-0000002",
                                                                      "P-0000003"]  # fmt: skip
    assert sorted(e.label for e in producer.failed) == ["P-big", "P-huge"]
    assert len(producer.errors) == 2, producer.errors
