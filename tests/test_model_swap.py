"""Hot swap end to end on a real broker, Redis and the ONNX backend: a worker running model A follows
`enrich rollout set B` under continuous traffic without a restart, and refuses a model whose labels do not
fit its graph while it keeps running the one it has."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from tests.test_pipeline import counter, finished, make_config
from workers.cli import main
from workers.contract.errors import ExitCode
from workers.model.identity import compute_digest
from workers.model.served import ServedModel
from workers.runtime.assembly import build_worker
from workers.runtime.control import ControlWriter, DesiredModel, WorkerReport, read_control, worker_key
from workers.runtime.worker import StreamWorker

pytestmark = pytest.mark.services


@pytest.fixture
def topics(new_topic: Callable[..., str]) -> tuple[str, str, str, str]:
    control = new_topic(prefix="control", config={"cleanup.policy": "compact"})
    return new_topic(partitions=3, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"), control


def swap_config(kafka: Any, redis_server: Any, model_dir: Path, topics: tuple[str, ...], group: str) -> Any:
    return make_config(
        kafka.bootstrap_servers, model_dir, topics[:3], group, ENRICH_REDIS_URL=redis_server.url,
        ENRICH_CONTROL_TOPIC=topics[3], ENRICH_CONTROL_REPORT_S="0.5",
    )  # fmt: skip


def spy_batches(worker: StreamWorker) -> list[tuple[str, set[str], list[str]]]:
    """Per inferred batch: the digest it ran on, the digests its items were tokenized with, its listings."""
    batches: list[tuple[str, set[str], list[str]]] = []
    infer = worker.enricher.infer

    async def recording(items: list[Any], serving: Any) -> Any:
        ids = [item.listing.listing_id for item in items]
        batches.append((serving.digest, {item.model_digest for item in items}, ids))
        return await infer(items, serving)

    worker.enricher.infer = recording  # type: ignore[method-assign]
    return batches


def spy_preparing(worker: StreamWorker) -> list[float | None]:
    """`enrich_model_swap_preparing` as each swap's preparation ends (before the swap sets it back)."""
    follower = worker.control.__self__  # type: ignore[union-attr]  # the bound ModelFollower.run
    prepare = follower._prepare
    seen: list[float | None] = []

    async def recording(desired: Any, current: Any) -> Any:
        try:
            return await prepare(desired, current)
        finally:
            seen.append(preparing(worker))

    follower._prepare = recording
    return seen


def preparing(worker: StreamWorker) -> float | None:
    return worker.metrics.registry.get_sample_value("enrich_model_swap_preparing")


def reported(bootstrap: str, control: str, group: str, worker: StreamWorker) -> WorkerReport | None:
    record = read_control(bootstrap, control).get(worker_key(group, worker.worker_id))
    return record if isinstance(record, WorkerReport) else None


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


async def until(done: Callable[[], bool], tasks: list[asyncio.Task[Any]], timeout_s: float = 90) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done():
        assert loop.time() < deadline and not any(t.done() for t in tasks), "condition not reached"
        await asyncio.sleep(0.05)


async def set_under_traffic(
    worker: StreamWorker, run: asyncio.Task[None], capsys: pytest.CaptureFixture[str],
    listings: list[tuple[bytes, bytes]], first: int, *argv: str,
) -> tuple[int, str]:  # fmt: skip
    """Produce `listings[:first]`, wait until they are enriched and the worker has reported, then run
    `enrich rollout set *argv` while the next listings arrive in chunks of 30, and the rest once it
    returned; its (exit code, output), once every listing is enriched."""
    kafka = worker._kafka
    bootstrap, topic, control, group = kafka.bootstrap_servers, kafka.input_topic, kafka.control_topic, \
        kafka.group_id  # fmt: skip
    await asyncio.to_thread(produce_records, bootstrap, topic, listings[:first])
    await until(lambda: finished(worker) >= first, [run])
    await until(lambda: reported(bootstrap, control, group, worker) is not None, [run])
    rollout = asyncio.create_task(asyncio.to_thread(cli, capsys, "rollout", "set", *argv))
    produced = first
    while produced < len(listings) - 30 and not rollout.done():
        await asyncio.to_thread(produce_records, bootstrap, topic, listings[produced : produced + 30])
        produced += 30
    result = await rollout
    await asyncio.to_thread(produce_records, bootstrap, topic, listings[produced:])
    await until(lambda: finished(worker) >= len(listings), [run])
    return result


def assert_switched_once(
    worker: StreamWorker, batches: list[tuple[str, set[str], list[str]]], digest_of: dict[str, str],
    input_topic: str, swapped: set[str], old: str, new: str,
) -> None:  # fmt: skip
    """No mixed batch; each inferred listing's event carries the model its batch ran on; per input
    partition, in offset order, the `swapped` listings are `old` up to one offset, then `new`, never back."""
    assert counter(worker, "enrich_mixed_batches") == 0
    for digest, tokenized_with, batch_ids in batches:
        assert tokenized_with == {digest}
        assert {digest_of[i] for i in batch_ids} == {digest}
    by_partition: dict[int, list[str]] = {}
    for record in read_events(worker._kafka.bootstrap_servers, input_topic, expected=len(digest_of),
                              timeout_s=15, raw=True):  # fmt: skip
        if record["key"].decode() in swapped:
            by_partition.setdefault(record["_partition"], []).append(record["key"].decode())
    assert by_partition
    for partition_ids in by_partition.values():
        sequence = [digest_of[i] for i in partition_ids]
        switch = sequence.index(new)
        assert set(sequence[:switch]) == {old} and set(sequence[switch:]) == {new}


def test_rollout_set_swaps_under_traffic_without_loss_or_mixed_batches(
    kafka, redis_server, tiny_model_dir: Path, other_tiny_model_dir: Path, topics: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bootstrap, control, group = kafka.bootstrap_servers, topics[3], "g-swap"
    a, b = ServedModel.load(tiny_model_dir).digest, ServedModel.load(other_tiny_model_dir).digest
    assert a != b
    listings = sample_listings(900, id_prefix="H", seed=11)
    worker = build_worker(swap_config(kafka, redis_server, tiny_model_dir, topics, group))
    batches = spy_batches(worker)
    prepared = spy_preparing(worker)
    common = ("--kafka-bootstrap", bootstrap, "--topic", control)

    async def scenario() -> None:
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        # `rollout set` (it waits until the worker reports B) while listings keep arriving.
        code, out = await set_under_traffic(worker, run, capsys, listings, 300, str(other_tiny_model_dir),
                                            "--group", group, "--wait", "60", *common)  # fmt: skip
        assert code == 0, out
        assert f"all 1 live workers run {b[:19]}" in out
        stop.set()
        await run

    asyncio.run(scenario())

    events = read_events(bootstrap, topics[1], expected=len(listings), timeout_s=15)
    ids = [e["listing_id"] for e in events]
    assert sorted(ids) == sorted(key.decode() for key, _ in listings)  # every listing once: none lost
    digest_of = {e["listing_id"]: e["model"]["digest"] for e in events}
    assert {a, b} == set(digest_of.values())
    assert {d for d, _, _ in batches} == {a, b}
    assert_switched_once(worker, batches, digest_of, topics[0], set(ids), a, b)
    assert counter(worker, "enrich_model_swaps") == 1
    assert prepared == [1.0] and preparing(worker) == 0.0  # 1 while preparing B only

    code, out = cli(capsys, "rollout", "status", "--group", group, *common)
    assert code == 0, out
    assert f"group {group}: desired {b[:19]} tiny v1" in out
    line = next(line for line in out.splitlines() if worker.worker_id in line)
    assert b[:19] in line and "on desired" in line and line.split()[-4:-2] == ["1", "0"]


def bad_labels_model(source: Path, dest: Path) -> Path:
    """`source` with one category fewer in labels.json: a self-consistent directory (digest recomputed)
    whose label maps no longer fit its graph's outputs."""
    shutil.copytree(source, dest)
    labels = json.loads((dest / "labels.json").read_text())
    dropped = labels["categories"].pop()
    labels["attributes_by_category"].pop(dropped, None)
    (dest / "labels.json").write_text(json.dumps(labels))
    info = json.loads((dest / "model_info.json").read_text())
    info["digest"] = compute_digest(dest)
    (dest / "model_info.json").write_text(json.dumps(info))
    return dest


def test_a_model_that_does_not_fit_is_refused_and_the_worker_keeps_its_own(
    kafka, redis_server, tiny_model_dir: Path, other_tiny_model_dir: Path, topics: tuple[str, ...],
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    bootstrap, control, group = kafka.bootstrap_servers, topics[3], "g-bad-swap"
    bad = bad_labels_model(other_tiny_model_dir, tmp_path / "bad")
    bad_model = ServedModel.load(bad)
    a = ServedModel.load(tiny_model_dir).digest
    common = ("--kafka-bootstrap", bootstrap, "--topic", control)

    # `rollout set` probes the model itself and writes nothing.
    code, out = cli(capsys, "rollout", "set", str(bad), "--group", group, "--wait", "0", *common)
    assert code == ExitCode.CONFIG and "labels.json has" in out, out
    assert read_control(bootstrap, control) == {}

    # The same model reaching the worker anyway (written straight to the topic): refused, counted, reported.
    worker = build_worker(swap_config(kafka, redis_server, tiny_model_dir, topics, group))
    prepared = spy_preparing(worker)
    listings = sample_listings(200, id_prefix="Q", seed=5)

    async def scenario() -> None:
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        writer = ControlWriter(bootstrap, control)
        writer.send(DesiredModel(group=group, digest=bad_model.digest, model_dir=str(bad), name="tiny",
                                 version="v1", set_at="now", set_by="test"))  # fmt: skip
        writer.flush()
        writer.close()
        await until(lambda: counter(worker, "enrich_model_swaps") >= 1, [run])
        await asyncio.to_thread(produce_records, bootstrap, topics[0], listings)
        await until(lambda: finished(worker) >= len(listings), [run])
        stop.set()
        await run

    asyncio.run(scenario())
    samples = {s.labels.get("outcome"): s.value for m in worker.metrics.registry.collect() for s in m.samples
               if s.name == "enrich_model_swaps_total"}  # fmt: skip
    assert samples == {"failed": 1.0}
    assert prepared == [1.0] and preparing(worker) == 0.0  # back to 0 after the refusal too
    events = read_events(bootstrap, topics[1], expected=len(listings), timeout_s=15)
    assert len(events) == len(listings) and {e["model"]["digest"] for e in events} == {a}
    report = reported(bootstrap, control, group, worker)
    assert report is not None and report.digest == a and report.failed_swaps == 1 and report.swaps == 0
    assert "ModelMismatch" in report.last_error
    code, out = cli(capsys, "rollout", "status", "--group", group, *common)
    assert code == 0 and "behind (last swap failed: ModelMismatch" in out, out
