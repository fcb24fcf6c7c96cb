"""`enrich services up|status|down` starts the stack in the background, finds it again through the state
file, and stops exactly those processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devtools.services.stack import adopt_processes

pytestmark = pytest.mark.services


def _enrich(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_services_up_status_down(tmp_path: Path) -> None:
    base = ["services", "--base-dir", str(tmp_path)]
    up = _enrich(*base, "up", "--no-triton")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((tmp_path / "state.json").read_text())
        assert set(state["services"]) == {"kafka-node-1", "redis"}
        processes = adopt_processes(state)
        assert all(process.is_running() for process in processes.values())

        bootstrap = state["env"]["ENRICH_KAFKA_BOOTSTRAP"]
        assert AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).brokers

        status = _enrich(*base, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"export ENRICH_KAFKA_BOOTSTRAP={bootstrap}" in status.stdout
        assert f"export ENRICH_REDIS_URL={state['env']['ENRICH_REDIS_URL']}" in status.stdout
    finally:
        down = _enrich(*base, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(process.is_running() for process in processes.values())
    assert not (tmp_path / "state.json").exists()
    assert _enrich(*base, "status").returncode == 1
