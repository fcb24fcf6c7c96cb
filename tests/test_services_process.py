"""The process helpers behind every local service: bounded waits that report the log, and stops that
escalate from SIGTERM to SIGKILL. Small Python children stand in for the services."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.services.ports import free_ports, is_port_open
from devtools.services.process import ManagedProcess, ServiceStartError

_IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('started and ignoring SIGTERM', flush=True)\n"
    "time.sleep(600)\n"
)


def _spawn(tmp_path: Path, code: str) -> ManagedProcess:
    return ManagedProcess.spawn("child", [sys.executable, "-c", code, str(tmp_path)],
                                log_path=tmp_path / "child.log", marker=str(tmp_path))


def test_wait_until_reports_exit_with_log_tail(tmp_path: Path) -> None:
    process = _spawn(tmp_path, "import sys; print('boom: bad config', flush=True); sys.exit(3)")
    with pytest.raises(ServiceStartError, match=r"(?s)exited \(code 3\).*boom: bad config"):
        process.wait_until(lambda: False, what="ready", timeout_s=30)


def test_wait_until_times_out_with_last_probe_error(tmp_path: Path) -> None:
    process = _spawn(tmp_path, "import time; time.sleep(600)")

    def probe() -> bool:
        raise ConnectionRefusedError("not listening yet")

    try:
        with pytest.raises(ServiceStartError, match=r"(?s)not ready after 1 s.*not listening yet"):
            process.wait_until(probe, what="ready", timeout_s=1, interval_s=0.1)
    finally:
        process.stop(timeout_s=5)


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    process = _spawn(tmp_path, _IGNORES_SIGTERM)
    process.wait_until(lambda: "ignoring SIGTERM" in process.log_tail(), what="started", timeout_s=30)
    process.stop(timeout_s=0.5)
    assert not process.is_running()
    assert process.returncode == -signal.SIGKILL


def test_adopted_pid_is_only_signalled_when_its_marker_matches(tmp_path: Path) -> None:
    process = _spawn(tmp_path, "import time; print('up', flush=True); time.sleep(600)")
    try:
        process.wait_until(lambda: "up" in process.log_tail(), what="started", timeout_s=30)
        stranger = ManagedProcess("stranger", process.pid, process.log_path, marker="/not/this/process")
        assert not stranger.is_running()
        stranger.stop(timeout_s=0.5)
        assert process.is_running()
        adopted = ManagedProcess("adopted", process.pid, process.log_path, marker=str(tmp_path))
        assert adopted.is_running()
        adopted.stop(timeout_s=10)
        assert process.wait_exit(10)
    finally:
        process.kill()


def test_free_ports_are_distinct_and_closed() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert not any(is_port_open(port) for port in ports)


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """A test run killed by a timeout must not leave its services running on a shared machine."""
    parent_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from devtools.services.process import ManagedProcess\n"
        "run = Path(sys.argv[1])\n"
        "child = ManagedProcess.spawn('grandchild', [sys.executable, '-c', 'import time; time.sleep(600)', "
        "str(run)], log_path=run / 'grandchild.log', marker=str(run))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    assert parent.stdout is not None
    grandchild = ManagedProcess("grandchild", int(parent.stdout.readline()), tmp_path / "grandchild.log",
                                marker=str(tmp_path))
    grandchild.wait_until(grandchild.is_running, what="running", timeout_s=30)
    parent.kill()
    parent.wait()
    assert grandchild.wait_exit(30), "the grandchild outlived its killed parent"
