"""Fail fast and tell: each start-up failure ends the command with its documented exit code and a one-line
message naming the setting; after start, a broker outage only makes /readyz false until it is back.

Real broker throughout: a closed port for "unreachable", a topic never created for "missing", and a
Kafka node of the test's own killed and started again for the outage.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from devtools.services.kafka import KafkaCluster
from tests.test_pipeline import make_config
from training.export import record_digest
from workers.cli import build_parser, main
from workers.contract.errors import ExitCode
from workers.runtime.assembly import run_worker
from workers.runtime.metrics import WorkerMetrics

pytestmark = pytest.mark.services

_REPO = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def enrich(*argv: str) -> tuple[int, str]:
    """`enrich ARGV` as its own process (the worker configures logging and signals): exit code, stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ENRICH_METRICS_PORT": "-1"}
    done = subprocess.run([sys.executable, "-m", "workers.cli", *argv], cwd=_REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    return done.returncode, done.stderr


def assert_one_line(stderr: str, code: ExitCode, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("enrich ")]
    assert len(lines) == 1, stderr
    assert lines[0].endswith(f"[exit {int(code)}: {code.name.lower()}]"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in stderr, stderr


def worker_args(bootstrap: str, model_dir: Path, topics: tuple[str, str, str]) -> list[str]:
    return ["worker", "--kafka-bootstrap", bootstrap, "--model-dir", str(model_dir),
            "--input-topic", topics[0], "--output-topic", topics[1], "--dlq-topic", topics[2],
            "--startup-timeout-s", "3"]  # fmt: skip


def test_exit_codes_are_distinct() -> None:
    assert [int(c) for c in ExitCode] == list(range(8))


def test_worker_exits_4_when_the_broker_does_not_answer(tiny_model_dir: Path) -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    code, err = enrich(*worker_args(bootstrap, tiny_model_dir, ("in", "out", "dlq")))
    assert code == ExitCode.UNREACHABLE
    assert_one_line(err, ExitCode.UNREACHABLE, bootstrap, "ENRICH_KAFKA_BOOTSTRAP / --kafka-bootstrap",
                    "Connection refused")  # fmt: skip


def test_worker_exits_5_naming_the_missing_topic(
    kafka: KafkaCluster, new_topic: Callable[..., str], tiny_model_dir: Path
) -> None:
    topics = (new_topic(prefix="in"), "never-created-out", new_topic(prefix="dlq"))
    code, err = enrich(*worker_args(kafka.bootstrap_servers, tiny_model_dir, topics))
    assert code == ExitCode.MISSING_TOPIC
    assert_one_line(err, ExitCode.MISSING_TOPIC, "'never-created-out' (ENRICH_OUTPUT_TOPIC / --output-topic)")


def test_worker_exits_3_without_model_onnx_or_with_labels_of_another_export(
    kafka: KafkaCluster, new_topic: Callable[..., str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    topics = (new_topic(prefix="in"), new_topic(prefix="out"), new_topic(prefix="dlq"))
    no_onnx = tmp_path / "no-onnx"
    shutil.copytree(tiny_model_dir, no_onnx, ignore=shutil.ignore_patterns("model.onnx"))
    code, err = enrich(*worker_args(kafka.bootstrap_servers, no_onnx, topics))
    assert code == ExitCode.CONFIG
    assert_one_line(err, ExitCode.CONFIG, f"{no_onnx} lacks model.onnx", "ENRICH_MODEL_DIR / --model-dir")

    other = tmp_path / "other-labels"  # labels.json with one category fewer than the model's outputs
    shutil.copytree(tiny_model_dir, other)
    labels = json.loads((other / "labels.json").read_text())
    dropped = labels["categories"].pop()
    labels["attributes_by_category"].pop(dropped)
    (other / "labels.json").write_text(json.dumps(labels))
    record_digest(other)  # a consistent-looking export of a wrong pairing (else: "a file was replaced")
    code, err = enrich(*worker_args(kafka.bootstrap_servers, other, topics))
    assert code == ExitCode.CONFIG
    assert_one_line(err, ExitCode.CONFIG, "category_probs", "different exports", "ENRICH_MODEL_DIR")


def test_tail_and_produce_sample_exit_4_on_a_wrong_broker_and_5_on_a_missing_topic(
    kafka: KafkaCluster, new_topic: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = f"127.0.0.1:{_closed_port()}"
    for command in ("tail", "produce-sample"):
        assert main([command, "--kafka-bootstrap", wrong, "--topic", "t", "--startup-timeout-s", "2"]) == 4
        assert_one_line(capsys.readouterr().err, ExitCode.UNREACHABLE, f"enrich {command}:", wrong,
                        "--kafka-bootstrap")  # fmt: skip
        argv = [command, "--kafka-bootstrap", kafka.bootstrap_servers, "--topic", "no-such-topic"]
        assert main(argv) == 5
        assert_one_line(capsys.readouterr().err, ExitCode.MISSING_TOPIC, "'no-such-topic' (--topic")
    topic = new_topic()  # and with both right, they run
    assert main(["produce-sample", "--kafka-bootstrap", kafka.bootstrap_servers, "--topic", topic,
                 "--count", "3"]) == 0  # fmt: skip
    assert main(["tail", "--kafka-bootstrap", kafka.bootstrap_servers, "--topic", topic,
                 "--from-beginning", "--max", "3", "--timeout", "30"]) == 0  # fmt: skip


def test_views_take_kafka_bootstrap_read_partitions_from_the_topic_and_keep_broker_as_alias(
    kafka: KafkaCluster, new_topic: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["views", "--broker", "b:1"])
    assert (args.kafka_bootstrap, args.partitions) == ("b:1", None)
    assert "--broker is deprecated, use --kafka-bootstrap" in capsys.readouterr().err
    topic = new_topic(partitions=2)
    argv = ["views", "--kafka-bootstrap", kafka.bootstrap_servers, "--input-topic", topic]
    assert main([*argv, "--partitions", "3"]) == ExitCode.CONFIG
    assert_one_line(capsys.readouterr().err, ExitCode.CONFIG, f"--partitions 3 but topic {topic!r} has 2")
    assert main(["views", "--kafka-bootstrap", kafka.bootstrap_servers, "--input-topic", "nope"]) == 5


def test_readyz_is_false_while_the_broker_is_down_and_true_again_once_it_is_back(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The worker's own one-node cluster: killed (as a crash would) under a running worker, then started
    again on its ports and data. The worker neither exits nor drops: what was produced before the outage
    and what is produced after it all come out."""
    with KafkaCluster(tmp_path_factory.mktemp("kafka-outage")) as cluster:
        bootstrap = cluster.bootstrap_servers
        topics = ("outage-in", "outage-out", "outage-dlq")
        for topic in topics:
            cluster.create_topic(topic)
        produce_records(bootstrap, topics[0], sample_listings(5, id_prefix="B"))
        port = _closed_port()
        config = make_config(bootstrap, tiny_model_dir, topics, "g-outage", ENRICH_METRICS_PORT=str(port),
                             ENRICH_METRICS_HOST="127.0.0.1")  # fmt: skip
        metrics = WorkerMetrics()
        seen: list[tuple[str, int]] = []

        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                    return reply.status
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:  # the endpoint is not up yet
                return 0

        def out() -> float:
            return metrics.registry.get_sample_value("enrich_events_out_total") or 0.0

        async def wait_for(what: str, check: Callable[[], bool], task: asyncio.Task[None]) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90  # a bound for a hung run, not a speed requirement
            while not await asyncio.to_thread(check):
                assert not task.done(), f"the worker stopped while waiting for {what}: {task}"
                assert loop.time() < deadline, f"never saw {what}"
                await asyncio.sleep(0.1)
            seen.append((what, await asyncio.to_thread(status, "/healthz")))

        async def scenario() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(run_worker(config, stop, metrics=metrics))
            try:
                await wait_for("ready, first listings out", lambda: status("/readyz") == 200 and out() >= 5,
                               task)  # fmt: skip
                cluster.kill_node(1)
                await wait_for("not ready while the broker is down", lambda: status("/readyz") == 503, task)
                # On this thread, not in to_thread: the node dies with the thread that spawned it
                # (PR_SET_PDEATHSIG), and the executor's threads end with asyncio.run. The loop waits
                # meanwhile; the worker's librdkafka threads do not.
                cluster.start_node(1)
                await wait_for("ready again", lambda: status("/readyz") == 200, task)
                after = sample_listings(5, id_prefix="A")
                await asyncio.to_thread(produce_records, bootstrap, topics[0], after)
                await wait_for("listings after the outage out", lambda: out() >= 10, task)
            finally:
                stop.set()
                await task

        asyncio.run(scenario())
        events = read_events(bootstrap, topics[1], expected=10, timeout_s=30)
        assert {e["listing_id"] for e in events} == {f"{p}-{i:06d}" for p in "BA" for i in range(5)}
    # Live (200) throughout, the outage included: the orchestrator must not restart a waiting worker.
    assert [code for _, code in seen] == [200, 200, 200, 200], seen
