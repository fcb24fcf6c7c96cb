"""Model identity: the digest of an exported model, in cache keys, events and metrics, in the Triton
repository (one numbered version per export), and the worker's refusal of a model that is not its own."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from devtools.harness.stack import prepare_triton_repo
from tests.test_pipeline import finished, make_config, run_until
from training.export import fill_triton_repo, record_digest
from workers.backends import ModelFit, TritonBackend
from workers.cli import main
from workers.contract.errors import ConfigError, ExitCode, ModelMismatch
from workers.model.identity import compute_digest, is_digest, short_digest
from workers.model.served import ServedModel, find_model_dir
from workers.runtime.assembly import build_worker, run_worker


def _copy(model_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(model_dir, dest))


def test_export_records_the_digest_of_graph_labels_and_tokenizer(
    tiny_model_dir: Path, other_tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = ServedModel.load(tiny_model_dir)
    other = ServedModel.load(other_tiny_model_dir)
    assert (model.name, model.version) == (other.name, other.version) == ("tiny", "v1")
    assert is_digest(model.digest) and model.digest != other.digest
    assert model.digest == json.loads((tiny_model_dir / "model_info.json").read_text())["digest"]
    assert model.short_digest == model.digest[:19] and len(short_digest(model.digest)) == len("sha256:") + 12

    # model_info.json is not part of it (it holds the digest); each of the other files is.
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    info = json.loads((copy / "model_info.json").read_text())
    (copy / "model_info.json").write_text(json.dumps({**info, "created_at": "another day"}))
    assert compute_digest(copy) == model.digest
    labels = json.loads((copy / "labels.json").read_text())
    (copy / "labels.json").write_text(json.dumps({**labels, "categories": labels["categories"][::-1]}))
    assert compute_digest(copy) != model.digest
    # A recorded digest the files contradict (a file copied over an export) is refused, not trusted.
    with pytest.raises(ModelMismatch, match="a file was replaced after export"):
        ServedModel.load(copy)


def test_a_model_dir_from_before_digests_gets_it_computed(tiny_model_dir: Path, tmp_path: Path) -> None:
    old = _copy(tiny_model_dir, tmp_path / "old")
    info = json.loads((old / "model_info.json").read_text())
    del info["digest"]
    (old / "model_info.json").write_text(json.dumps(info))
    digest = ServedModel.load(tiny_model_dir).digest
    assert ServedModel.load(old).digest == digest
    # A hot swap to it (the desired record names the directory) finds it by its files, as `rollout set` did
    # (the model-swap chaos run swapping back to such a model failed with "not found" before).
    assert find_model_dir(digest, old, None) == old
    with pytest.raises(ConfigError, match="not found"):
        find_model_dir("sha256:" + "0" * 64, old, None)
    # A Triton worker's directory may lack the graph: the recorded digest is taken as it is.
    slim = _copy(tiny_model_dir, tmp_path / "slim")
    (slim / "model.onnx").unlink()
    assert ServedModel.load(slim).digest == ServedModel.load(tiny_model_dir).digest


def test_export_twice_writes_versions_1_and_2_with_their_digests(
    tiny_model_dir: Path, other_tiny_model_dir: Path, tmp_path: Path
) -> None:
    repo = prepare_triton_repo(tiny_model_dir, tmp_path / "cpu")
    first, second = ServedModel.load(tiny_model_dir).digest, ServedModel.load(other_tiny_model_dir).digest
    assert fill_triton_repo(other_tiny_model_dir, repo).name == "2"
    assert fill_triton_repo(other_tiny_model_dir, repo).name == "2"  # the same model again: no new version
    root = repo / "attribute_extractor"
    for version, digest in (("1", first), ("2", second)):
        assert json.loads((root / version / "model_info.json").read_text())["digest"] == digest
        assert (root / version / "model.py").read_bytes() == (root / "1" / "model.py").read_bytes()
    config = (root / "config.pbtxt").read_text()
    assert f'key: "model_digest_v1" value: {{ string_value: "{first}" }}' in config
    assert f'key: "model_digest_v2" value: {{ string_value: "{second}" }}' in config
    assert f'key: "model_digest" value: {{ string_value: "{second}" }}' in config
    assert config.count('"model_digest"') == 1
    # A new repository copied from this one starts again from the template.
    assert fill_triton_repo(tiny_model_dir, repo).name == "3"
    fresh = prepare_triton_repo(other_tiny_model_dir, tmp_path / "fresh")
    assert sorted(p.name for p in (fresh / "attribute_extractor").iterdir() if p.is_dir()) == ["1"]


@pytest.mark.services
def test_two_models_on_one_redis_never_serve_each_others_results(
    kafka, redis_server, tiny_model_dir: Path, other_tiny_model_dir: Path, new_topic: Callable[..., str]
) -> None:
    bootstrap = kafka.bootstrap_servers
    listings = sample_listings(30, id_prefix="M")
    # Other tests of the session cached these titles under the first model: start from an empty cache.
    redis_server.client().flushdb()
    runs = {}
    for label, model_dir in (("a", tiny_model_dir), ("b", other_tiny_model_dir), ("a-again", tiny_model_dir)):
        topics = (new_topic(prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
        produce_records(bootstrap, topics[0], listings)
        config = make_config(bootstrap, model_dir, topics, f"g-{label}", ENRICH_REDIS_URL=redis_server.url)
        worker = build_worker(config)
        asyncio.run(run_until([worker], lambda w=worker: finished(w) >= 30))
        runs[label] = read_events(bootstrap, topics[1], expected=30, timeout_s=15)
        info = worker.metrics.registry.get_sample_value(
            "enrich_model_info", {"name": "tiny", "version": "v1", "digest": worker.model.digest}
        )
        assert info == 1
    digest_a = ServedModel.load(tiny_model_dir).digest
    digest_b = ServedModel.load(other_tiny_model_dir).digest
    assert [e["cache_hit"] for e in runs["a"]] == [False] * 30
    assert [e["cache_hit"] for e in runs["b"]] == [False] * 30  # same name and version, other model: misses
    assert [e["cache_hit"] for e in runs["a-again"]] == [True] * 30
    for label, digest in (("a", digest_a), ("b", digest_b), ("a-again", digest_a)):
        assert {json.dumps(e["model"], sort_keys=True) for e in runs[label]} == {
            json.dumps({"name": "tiny", "version": "v1", "digest": digest}, sort_keys=True)
        }
    results = {
        label: {e["listing_id"]: (e["category"], e["attributes"]) for e in events}
        for label, events in runs.items()
    }
    assert results["a-again"] == results["a"]
    assert results["b"] != results["a"]  # the two models answer differently: a shared entry would show


@pytest.mark.services
def test_the_worker_refuses_a_triton_model_with_another_digest(
    kafka, new_topic, tiny_model_dir: Path, other_tiny_model_dir: Path, triton_factory, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    repo = prepare_triton_repo(tiny_model_dir, tmp_path / "cpu")
    fill_triton_repo(other_tiny_model_dir, repo)  # version 2: the one Triton serves
    triton = triton_factory(repo)
    served, ours = ServedModel.load(other_tiny_model_dir).digest, ServedModel.load(tiny_model_dir).digest

    async def check(expected: str) -> None:
        backend = TritonBackend(triton.grpc_url, "attribute_extractor", max_in_flight=1, timeout_s=10)
        try:
            await backend.check_model(ModelFit(8, digest=expected))
        finally:
            await backend.close()

    asyncio.run(check(served))
    with pytest.raises(ModelMismatch, match=f"is {short_digest(served)} but the worker's model directory is"):
        asyncio.run(check(ours))

    # `enrich worker` says so and exits 3, a configuration error (before it consumes anything).
    argv = ["worker", "--model-dir", str(tiny_model_dir), "--backend", "triton",
            "--triton-url", triton.grpc_url, "--metrics-port", "-1", "--redis-url", "",
            "--kafka-bootstrap", kafka.bootstrap_servers, "--input-topic", new_topic(),
            "--output-topic", new_topic(), "--dlq-topic", new_topic()]  # fmt: skip
    assert main(argv) == ExitCode.CONFIG
    assert short_digest(ours) in capsys.readouterr().err


@pytest.mark.services
def test_labels_that_do_not_fit_the_graph_are_refused_at_start(
    kafka, new_topic: Callable[..., str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    mismatched = _copy(tiny_model_dir, tmp_path / "mismatched")
    labels = json.loads((mismatched / "labels.json").read_text())
    labels["categories"].append("Extra")
    labels["attributes_by_category"]["Extra"] = []
    (mismatched / "labels.json").write_text(json.dumps(labels))
    record_digest(mismatched)  # a consistent-looking export of a wrong pairing
    topics = (new_topic(prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    config = make_config(kafka.bootstrap_servers, mismatched, topics, "g-labels")
    with pytest.raises(ModelMismatch, match=r"but labels\.json has"):
        asyncio.run(run_worker(config, asyncio.Event()))
