"""`enrich produce-sample` and `enrich tail` on the real broker; `enrich worker --help` lists the env vars."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from workers.cli import main
from workers.contract.events import SCHEMA_DIR


def test_worker_help_lists_settings_with_env_vars(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = capsys.readouterr().out
    for env in ("ENRICH_KAFKA_BOOTSTRAP", "ENRICH_BACKEND", "ENRICH_GROUP_ID", "ENRICH_EXACTLY_ONCE"):
        assert env in text


def test_worker_reports_a_missing_model_dir(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--model-dir", "", "--metrics-port", "-1"]) == 3  # ExitCode.CONFIG
    assert "ENRICH_MODEL_DIR" in capsys.readouterr().err


@pytest.mark.services
def test_produce_sample_then_tail(
    kafka, new_topic: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic()
    bootstrap = kafka.bootstrap_servers
    assert (
        main(
            ["produce-sample", "--kafka-bootstrap", bootstrap, "--topic", topic, "--count", "7", "--invalid"]
        )
        == 0
    )
    assert "produced 12 records" in capsys.readouterr().out
    assert len(read_events(bootstrap, topic, expected=12, timeout_s=10, raw=True)) == 12

    out_topic = new_topic()
    event = (SCHEMA_DIR / "examples" / "listing-attributes.v1.valid.json").read_bytes().strip()
    produce_records(bootstrap, out_topic, [(b"L-1", event), (b"L-2", b"not json")])
    assert main(["tail", "--kafka-bootstrap", bootstrap, "--topic", out_topic, "--from-beginning",
                 "--max", "2", "--timeout", "20"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert "L-000042" in lines[0] and "Coffee (0.97)" in lines[0] and "Brand=Lavazza" in lines[0]
    assert "unreadable record" in lines[1]
