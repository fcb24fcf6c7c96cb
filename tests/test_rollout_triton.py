"""The Triton load/unload path of `enrich rollout`, end to end on a real tritonserver (explicit model
control), a real broker and Redis, with two tiny models A and B exported into one Triton repository as
versions 1 and 2. One Triton start serves steps 1 to 3:

1. Triton serves version 1 (A); a worker on the Triton backend pins it and enriches under traffic;
2. `rollout set B --backend triton --wait`: Triton serves 1 and 2 before the desired record is written,
   the worker moves to version 2, Triton unloads 1; every listing once, per partition A then B;
3. `rollout canary A`: Triton loads version 1 again before the candidate record is written; `set B` once
   more keeps it (the candidate calls it); the canary's share is served by A; `rollout rollback --wait`
   unloads version 1 once the worker dropped the trial, and B (version 2) goes on serving;
4. `rollout set A --wait 0` loads version 1 next to 2 and writes that version policy into config.pbtxt:
   a Triton restarted on the repository (the one restart of the test) serves both again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from devtools.harness.stack import prepare_triton_repo
from tests.test_model_swap import assert_switched_once, cli, reported, set_under_traffic, spy_batches, until
from tests.test_pipeline import counter, finished, make_config
from tests.test_rollout_trial import ids_in, trial_of
from training.export import CPU_MODEL_NAME, fill_triton_repo
from workers.model.served import ServedModel
from workers.runtime.assembly import build_worker, wait_for_backend
from workers.runtime.control import CandidateModel, ControlWriter, DesiredModel, candidate_key, read_control
from workers.triton_policy import policy_line

pytestmark = pytest.mark.services


def versions_ready(triton: Any) -> set[str]:
    return {v for v in ("1", "2") if triton.is_model_ready(CPU_MODEL_NAME, v)}


def test_triton_loads_before_and_unloads_after_set_canary_and_rollback(
    kafka, redis_server, triton_factory, tiny_model_dir: Path, other_tiny_model_dir: Path,
    new_topic: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    a, b = (ServedModel.load(d).digest for d in (tiny_model_dir, other_tiny_model_dir))
    repo = prepare_triton_repo(tiny_model_dir, tmp_path / "cpu")  # version 1: A
    triton = triton_factory(repo)
    # `enrich export` of B while Triton serves A: version 2, which explicit model control does not load.
    assert fill_triton_repo(other_tiny_model_dir, repo).name == "2"
    config_text = (repo / CPU_MODEL_NAME / "config.pbtxt").read_text()
    assert f'"model_digest_v1" value: {{ string_value: "{a}"' in config_text
    assert f'"model_digest_v2" value: {{ string_value: "{b}"' in config_text
    assert versions_ready(triton) == {"1"}

    bootstrap, group = kafka.bootstrap_servers, "g-triton-rollout"
    topics = (new_topic(partitions=3, prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    control = new_topic(prefix="control", config={"cleanup.policy": "compact"})
    config = make_config(
        bootstrap, tiny_model_dir, topics, group, ENRICH_BACKEND="triton", ENRICH_TRITON_URL=triton.grpc_url,
        ENRICH_REDIS_URL=redis_server.url, ENRICH_CONTROL_TOPIC=control, ENRICH_CONTROL_REPORT_S="0.5",
    )  # fmt: skip
    worker = build_worker(config)
    batches = spy_batches(worker)
    common = ("--kafka-bootstrap", bootstrap, "--topic", control, "--group", group)
    triton_flags = ("--backend", "triton", "--triton-url", triton.grpc_url, "--triton-repo", str(repo))

    # What Triton serves at the moment each desired or candidate record is written.
    at_write: list[tuple[str, set[str]]] = []
    send = ControlWriter.send

    def spying_send(self: ControlWriter, record: Any) -> None:
        if isinstance(record, DesiredModel | CandidateModel):
            at_write.append((record.digest, versions_ready(triton)))
        send(self, record)

    monkeypatch.setattr(ControlWriter, "send", spying_send)

    swapped = sample_listings(600, id_prefix="T", seed=13)
    canary, after = sample_listings(150, id_prefix="C", seed=14), sample_listings(40, id_prefix="R", seed=15)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        await wait_for_backend(worker, config, timeout_s=30)
        seen["pinned"] = worker.serving.triton_version
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        # Listings keep arriving while Triton loads version 2, the worker swaps and Triton unloads 1.
        seen["set"] = await set_under_traffic(worker, run, capsys, swapped, 200, str(other_tiny_model_dir),
                                              "--wait", "60", *triton_flags, *common)  # fmt: skip
        seen["after_set"] = versions_ready(triton)
        seen["report"] = reported(bootstrap, control, group, worker)

        code, out = await asyncio.to_thread(cli, capsys, "rollout", "canary", str(tiny_model_dir),
                                            "--share", "0.3", *triton_flags, *common)  # fmt: skip
        seen["canary"] = code, out
        await until(lambda: bool(trial_of(bootstrap, control, group, worker)), [run])
        # `set` of the model already desired (as after a Triton restart): the canary's version stays loaded.
        seen["reset"] = await asyncio.to_thread(
            cli, capsys, "rollout", "set", str(other_tiny_model_dir), "--wait", "60", *triton_flags, *common)
        seen["during_canary"] = versions_ready(triton)
        await asyncio.to_thread(produce_records, bootstrap, topics[0], canary)
        await until(lambda: finished(worker) >= len(swapped) + len(canary), [run])

        seen["rollback"] = await asyncio.to_thread(
            cli, capsys, "rollout", "rollback", "--wait", "60", *triton_flags, *common)
        seen["after_rollback"] = versions_ready(triton)
        seen["trial_after"] = trial_of(bootstrap, control, group, worker)
        await asyncio.to_thread(produce_records, bootstrap, topics[0], after)
        await until(lambda: finished(worker) >= len(swapped) + len(canary) + len(after), [run])
        stop.set()
        await run

    asyncio.run(scenario())

    # 1. The worker pinned the version holding its model.
    assert seen["pinned"] == "1"
    # 2. set: both versions served when the desired record was written; the old one unloaded after.
    code, out = seen["set"]
    assert code == 0, out
    assert "Triton serves attribute_extractor versions ['1', '2']" in out, out
    assert f"all 1 live workers run {b[:19]}" in out and "Triton unloaded versions ['1']" in out, out
    assert at_write[0] == (b, {"1", "2"})
    assert seen["after_set"] == {"2"}
    report = seen["report"]
    assert report is not None and report.digest == b and report.triton_version == "2"

    events = read_events(bootstrap, topics[1], expected=len(swapped) + len(canary) + len(after), timeout_s=15)
    ids = [e["listing_id"] for e in events]
    assert sorted(ids) == sorted(key.decode() for key, _ in swapped + canary + after)  # each exactly once
    digest_of = {e["listing_id"]: e["model"]["digest"] for e in events}
    assert_switched_once(worker, batches, digest_of, topics[0], {key.decode() for key, _ in swapped}, a, b)

    # 3. canary A: version 1 loaded again before the candidate record, the share served by A.
    code, out = seen["canary"]
    assert code == 0 and "Triton serves attribute_extractor versions ['1', '2']" in out, out
    assert at_write[1] == (a, {"1", "2"})
    code, out = seen["reset"]
    assert code == 0 and f"all 1 live workers run {b[:19]}" in out and "unloaded" not in out, out
    assert at_write[2] == (b, {"1", "2"}) and seen["during_canary"] == {"1", "2"}
    share = ids_in(canary, 0.3)
    assert 0 < len(share) < len(canary)
    for key, _ in canary:
        assert digest_of[key.decode()] == (a if key.decode() in share else b), key
    # rollback: the trial dropped, then version 1 unloaded; B (version 2) serves the listings after it.
    code, out = seen["rollback"]
    assert code == 0 and "dropped" in out and "Triton unloaded versions ['1']" in out, out
    assert seen["trial_after"] == "" and seen["after_rollback"] == {"2"}
    assert all(digest_of[key.decode()] == b for key, _ in after)
    assert read_control(bootstrap, control).get(candidate_key(group)) is None
    assert len(at_write) == 3
    assert counter(worker, "enrich_model_swaps") == 1

    # 4. A restarted Triton serves what the last rollout made it serve. `set A --wait 0` (back to the older
    # version 1 while 2 is the newest) loads 1 next to 2; the policy in config.pbtxt is all a new Triton
    # reads, and its default (the newest version only) would leave the desired version 1 unserved.
    code, out = cli(capsys, "rollout", "set", str(tiny_model_dir), "--wait", "0", *triton_flags, *common)
    assert code == 0 and "Triton serves attribute_extractor versions ['1', '2']" in out, out
    config_text = (repo / CPU_MODEL_NAME / "config.pbtxt").read_text()
    assert f"{policy_line([1, 2])}\n" in config_text  # and, next line, the digest parameters kept
    assert f'"model_digest_v2" value: {{ string_value: "{b}"' in config_text
    triton.stop()
    assert versions_ready(triton_factory(repo)) == {"1", "2"}
