"""Shadow and canary end to end on a real broker, Redis and the ONNX backend, with two tiny models (A the
worker's, B the candidate): `enrich rollout shadow|canary|report|promote|rollback` against a running
worker under real traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from tests.test_model_swap import cli, reported, until
from tests.test_pipeline import counter, finished, make_config
from workers.model.served import ServedModel
from workers.runtime.assembly import build_worker
from workers.runtime.control import candidate_key, read_control
from workers.runtime.worker import StreamWorker
from workers.stages.trial import in_sample

pytestmark = pytest.mark.services


@pytest.fixture
def topics(new_topic: Callable[..., str]) -> dict[str, str]:
    return {
        "in": new_topic(partitions=3, prefix="in"), "out": new_topic(prefix="out"),
        "dlq": new_topic(prefix="dlq"),
        "control": new_topic(prefix="control", config={"cleanup.policy": "compact"}),
        "shadow": new_topic(prefix="shadow"),
    }  # fmt: skip


def trial_worker(
    kafka: Any, redis_server: Any, model_dir: Path, topics: dict[str, str], group: str
) -> StreamWorker:
    return build_worker(make_config(
        kafka.bootstrap_servers, model_dir, (topics["in"], topics["out"], topics["dlq"]), group,
        ENRICH_REDIS_URL=redis_server.url, ENRICH_CONTROL_TOPIC=topics["control"],
        ENRICH_CONTROL_REPORT_S="0.5", ENRICH_SHADOW_TOPIC=topics["shadow"],
    ))  # fmt: skip


def trial_of(bootstrap: str, control: str, group: str, worker: StreamWorker) -> str | None:
    report = reported(bootstrap, control, group, worker)
    return None if report is None else report.trial


def samples(worker: StreamWorker, name: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.values()): s.value for m in worker.metrics.registry.collect() for s in m.samples
            if s.name == name}  # fmt: skip


def ids_in(listings: list[tuple[bytes, bytes]], fraction: float) -> set[str]:
    return {key.decode() for key, _ in listings if in_sample(key.decode(), fraction)}


Prologue = Callable[[str], tuple[str, str, str, tuple[str, ...], StreamWorker]]


@pytest.fixture
def prologue(kafka, redis_server, tiny_model_dir: Path, other_tiny_model_dir: Path,
             topics: dict[str, str]) -> Prologue:  # fmt: skip
    """For a group: bootstrap, digests A and B, the group's rollout flags, a worker on A."""

    def make(group: str) -> tuple[str, str, str, tuple[str, ...], StreamWorker]:
        a, b = (ServedModel.load(d).digest for d in (tiny_model_dir, other_tiny_model_dir))
        common = ("--kafka-bootstrap", kafka.bootstrap_servers, "--topic", topics["control"],
                  "--group", group)  # fmt: skip
        worker = trial_worker(kafka, redis_server, tiny_model_dir, topics, group)
        return kafka.bootstrap_servers, a, b, common, worker

    return make


async def start_trial(
    worker: StreamWorker, stop: asyncio.Event, capsys: pytest.CaptureFixture[str], control: str, group: str,
    *argv: str,
) -> tuple[asyncio.Task[None], str]:  # fmt: skip
    """Run the worker, give it a candidate (`enrich rollout *argv`), wait until it reports the trial."""
    run = asyncio.create_task(worker.run(stop))
    bootstrap = worker._kafka.bootstrap_servers
    await until(lambda: reported(bootstrap, control, group, worker) is not None, [run])
    code, out = await asyncio.to_thread(cli, capsys, "rollout", *argv)
    assert code == 0, out
    await until(lambda: bool(trial_of(bootstrap, control, group, worker)), [run])
    return run, out


def test_shadow_compares_a_fixed_sample_on_the_shadow_topic_only_and_reports_agreement(
    prologue: Prologue, other_tiny_model_dir: Path, topics: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    group = "g-shadow"
    bootstrap, a, b, common, worker = prologue(group)
    listings = sample_listings(240, id_prefix="S", seed=3)
    sampled = ids_in(listings, 0.3)

    def shadowed() -> float:  # sampled listings compared or skipped (busy, failed, undelivered)
        return counter(worker, "enrich_shadow_compared") + counter(worker, "enrich_shadow_skipped")

    async def scenario() -> None:
        stop = asyncio.Event()
        run, _ = await start_trial(worker, stop, capsys, topics["control"], group, "shadow",
                                   str(other_tiny_model_dir), "--sample", "0.3", "--shadow-topic",
                                   topics["shadow"], *common)  # fmt: skip
        # Twice the same listings: inferred, then cache hits; the sample is the same both times.
        for _ in range(2):
            await asyncio.to_thread(produce_records, bootstrap, topics["in"], listings)
        await until(lambda: finished(worker) >= 2 * len(listings) and shadowed() >= 2 * len(sampled),
                    [run])  # fmt: skip
        code, out = await asyncio.to_thread(cli, capsys, "rollout", "rollback", *common)
        assert code == 0 and "dropped" in out, out
        await until(lambda: trial_of(bootstrap, topics["control"], group, worker) == "", [run])
        stop.set()
        await run

    asyncio.run(scenario())
    # The output topic: every listing twice, all by the active model A.
    events = read_events(bootstrap, topics["out"], expected=2 * len(listings), timeout_s=15)
    assert len(events) == 2 * len(listings) and {e["model"]["digest"] for e in events} == {a}
    # The shadow topic: only sampled listings, B next to A; what was not compared was counted as skipped.
    compared = counter(worker, "enrich_shadow_compared")
    records = read_events(bootstrap, topics["shadow"], expected=int(compared), timeout_s=15)
    assert len(records) == compared > 0
    assert counter(worker, "enrich_shadow_skipped") == 2 * len(sampled) - compared
    assert {r["listing_id"] for r in records} <= sampled
    assert {r["candidate"]["model"]["digest"] for r in records} == {b}
    assert {r["active"]["model"]["digest"] for r in records} == {a}
    assert {r["active"]["cache_hit"] for r in records} == {False, True}
    assert all(r["candidate"]["latency_ms"] > 0 for r in records)
    assert samples(worker, "enrich_shadow_skipped_total").keys() <= {(b, "busy")}  # never failed/undelivered
    category = samples(worker, "enrich_shadow_category_total")
    assert sum(category.values()) == compared and set(category) <= {(b, "agree"), (b, "differ")}

    code, out = cli(capsys, "rollout", "report", "--group", group, "--shadow-topic", topics["shadow"],
                    "--kafka-bootstrap", bootstrap, "--topic", topics["control"])  # fmt: skip
    with capsys.disabled():
        print(out)  # the report of a real run (shown with -s)
    assert code == 0, out
    listings_compared = len({(r["listing_id"], r["listing_version"]) for r in records})
    assert f"candidate {b[:19]} (tiny v1) vs active {a[:19]}" in out
    assert f"listings compared    {listings_compared}\n" in out
    last = {(r["listing_id"], r["listing_version"]): r for r in records}  # the report counts the last
    agree = sum(r["agreement"]["category"] for r in last.values())
    assert f"({agree} of {listings_compared})" in out
    code, out = cli(capsys, "rollout", "status", *common)
    assert code == 0 and "candidate:" not in out and "trial:" not in out, out
    assert read_control(bootstrap, topics["control"]).get(candidate_key(group)) is None


def test_canary_serves_its_share_by_listing_and_promote_makes_it_the_model(
    prologue: Prologue, other_tiny_model_dir: Path, topics: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap, a, b, common, worker = prologue("g-canary")
    group, listings = common[-1], sample_listings(300, id_prefix="K", seed=8)
    share, after = ids_in(listings, 0.2), sample_listings(60, id_prefix="P", seed=9)

    async def scenario() -> None:
        stop = asyncio.Event()
        run, out = await start_trial(worker, stop, capsys, topics["control"], group, "canary",
                                     str(other_tiny_model_dir), "--share", "0.2", *common)  # fmt: skip
        assert "serves 20.0% of listings" in out, out
        code, out = await asyncio.to_thread(cli, capsys, "rollout", "status", *common)
        assert f"candidate: canary {b[:19]} tiny v1, share 20.0%" in out and "trial: canary" in out, out
        for _ in range(2):  # the same listings twice: the second time from each model's own cache
            await asyncio.to_thread(produce_records, bootstrap, topics["in"], listings)
        await until(lambda: finished(worker) >= 2 * len(listings), [run])
        code, out = await asyncio.to_thread(cli, capsys, "rollout", "promote", "--wait", "60", *common)
        assert code == 0 and f"all 1 live workers run {b[:19]}" in out and "promoted" in out, out
        await until(lambda: trial_of(bootstrap, topics["control"], group, worker) == "", [run])
        await asyncio.to_thread(produce_records, bootstrap, topics["in"], after)
        await until(lambda: finished(worker) >= 2 * len(listings) + len(after), [run])
        stop.set()
        await run

    asyncio.run(scenario())
    events = read_events(bootstrap, topics["out"], expected=2 * len(listings) + len(after), timeout_s=15)
    served: dict[str, set[str]] = {}
    for event in events:
        served.setdefault(event["listing_id"], set()).add(event["model"]["digest"])
    # Each listing by one model both times: the candidate exactly for the listings of its share.
    for key, _ in listings:
        assert served[key.decode()] == ({b} if key.decode() in share else {a}), key
    assert 0 < len(share) < len(listings)
    assert counter(worker, "enrich_canary_listings") == 2 * len(share)
    assert counter(worker, "enrich_mixed_batches") == 0
    # Promoted: every new listing by B, the candidate record gone.
    assert all(served[key.decode()] == {b} for key, _ in after)
    assert read_control(bootstrap, topics["control"]).get(candidate_key(group)) is None
    code, out = cli(capsys, "rollout", "status", *common)
    assert code == 0 and f"desired {b[:19]}" in out and "candidate:" not in out and "on desired" in out, out
