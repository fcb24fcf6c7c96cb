"""Bugs the chaos scenarios found, each pinned by a focused test (see devtools/reliability/RESULTS.md).

1. A record too large for the worker's own dead-letter producer crashes the worker on every restart (a
   poison pill). Fixed: payload and key are bounded so the encoded record fits (workers/contract/events.py).
2. (Fixed in e35535c.) Triton answers NOT_FOUND ("has no available versions") while it unloads models
   during a graceful shutdown (and during any model reload); the worker took that as permanent and exited.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from devtools.services.triton import TritonServer
from workers.contract.errors import BackendUnavailable, ReasonCode
from workers.contract.events import SourceRecord, dead_letter_event

# librdkafka's default `message.max.bytes`, which the worker's producer (workers/runtime/producer.py) keeps,
# and the broker's default limit is about the same: a dead-letter record larger than this can never be
# written.
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_000_000


@pytest.mark.parametrize(
    ("key", "payload"),
    [
        (b"L-1", b'{"title": "' + b"A" * (10 * 2**20) + b'"}'),
        (b"L-1", b"\xff" * 900_000),
        # Valid UTF-8 is kept as JSON text, where each control byte becomes a 6-byte \u00XX escape.
        (b"L-1", b"\x01" * 300_000),
        (b"\x01" * 200_000, b"{}"),
        (b"k" * 3_000_000, b"{}"),
    ],
    ids=["10MB-json", "900KB-not-utf8", "300KB-control-bytes", "200KB-control-bytes-key", "3MB-key"],
)
def test_dead_letter_record_of_an_oversized_record_fits_in_one_kafka_message(
    key: bytes, payload: bytes
) -> None:
    # The broker accepted the input (within its defaults, or a topic allowing 16 MB); its dead-letter
    # record must still be producible, or the worker dies on it and on every restart (partition blocked).
    source = SourceRecord("listings.new", 0, 42, key)
    record = dead_letter_event(source, payload, ReasonCode.PAYLOAD_TOO_LARGE, "too large", "worker-1")
    assert len(record) < KAFKA_DEFAULT_MAX_MESSAGE_BYTES


@pytest.mark.services
def test_triton_model_unloaded_for_a_moment_is_retriable_not_fatal(
    triton_factory: Callable[..., TritonServer], tiny_triton_repo: Path
) -> None:
    from workers.backends import TritonBackend

    server = triton_factory(tiny_triton_repo)
    url = f"http://{server.http_url}/v2/repository/models/attribute_extractor"
    ids = np.ones((1, 16), dtype=np.int64)

    async def infer_once() -> None:
        backend = TritonBackend(server.grpc_url, "attribute_extractor", max_in_flight=1, timeout_s=10)
        try:
            await backend.infer(ids, ids)
        finally:
            await backend.close()

    asyncio.run(infer_once())  # served
    urllib.request.urlopen(urllib.request.Request(f"{url}/unload", data=b"{}", method="POST"), timeout=30)
    try:
        # What a worker sees while tritonserver drains on SIGTERM (it unloads models before it stops
        # listening) or while the model is reloaded: it must wait and retry, not exit.
        with pytest.raises(BackendUnavailable):
            asyncio.run(infer_once())
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{url}/load", data=b"{}", method="POST"), timeout=60)
