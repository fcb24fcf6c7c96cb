"""The bench's peers (Quix Streams, Faust, Bytewax) do the same job as our worker: every listing out once,
with the same category and attributes as ours, against the real broker and tritonserver. Never speed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.bench.peers.run import CONTESTANTS, Contestant, PeersRun, available, compare_outputs
from devtools.harness.titles import fixture_titles

pytestmark = pytest.mark.services

EVENTS = 100
PEERS = [c for c in CONTESTANTS if c.name != "ours"]


@pytest.fixture(scope="module")
def peers_run(tiny_model_dir: Path, tiny_triton_repo: Path, kafka: Any, triton_factory: Callable[..., Any],
              tmp_path_factory: pytest.TempPathFactory) -> PeersRun:  # fmt: skip
    triton = triton_factory(tiny_triton_repo)
    env = {"ENRICH_KAFKA_BOOTSTRAP": kafka.bootstrap_servers, "ENRICH_MODEL_DIR": str(tiny_model_dir),
           "ENRICH_TRITON_URL": triton.grpc_url, "ENRICH_METRICS_PORT": "-1", "ENRICH_LOG_LEVEL": "WARNING",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    run = PeersRun(kafka, env, tmp_path_factory.mktemp("peers-logs"), timeout_s=180)
    ours = run.throughput(CONTESTANTS[0], fixture_titles(distinct=True), EVENTS)
    assert (ours["lost"], ours["duplicates"]) == (0, 0)
    return run


def test_every_framework_the_bench_names_is_installed() -> None:
    ready, skipped = available()
    assert skipped == {}
    assert [c.name for c in ready] == ["ours", "quix", "faust", "bytewax"]


@pytest.mark.parametrize("peer", PEERS, ids=[c.name for c in PEERS])
def test_peer_emits_every_listing_once_with_our_values(peers_run: PeersRun, peer: Contestant) -> None:
    row = peers_run.throughput(peer, fixture_titles(distinct=True), EVENTS)

    assert (row["outputs"], row["lost"], row["duplicates"]) == (EVENTS, 0, 0)
    differing, max_diff = compare_outputs(peers_run.outputs["ours"], peers_run.outputs[peer.name])
    assert differing == []
    assert max_diff < 1e-3
    assert set(peers_run.outputs[peer.name]) == set(peers_run.outputs["ours"])


def test_compare_outputs_names_a_listing_whose_values_differ() -> None:
    def event(value: str, confidence: float) -> dict[str, Any]:
        brand = {"name": "brand", "value": value, "start": 0, "end": 4, "confidence": confidence}
        return {"category": {"label": "Shoes", "confidence": 0.9}, "attributes": [brand]}

    ours = {"a": event("Nike", 0.5), "b": event("Nike", 0.5), "c": event("Nike", 0.5)}
    theirs = {"a": event("Nike", 0.5002), "b": event("Puma", 0.5)}  # "c" lost: not a mismatch

    assert compare_outputs(ours, theirs) == (["b"], pytest.approx(0.0002))
