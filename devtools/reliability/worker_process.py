"""`enrich worker` as a child process: start, SIGKILL, SIGTERM, and its peak RSS sampled by a thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from devtools.paths import REPO_ROOT

__all__ = ["RssSampler", "WorkerProcess", "enrich_command"]



def enrich_command() -> list[str]:
    """The venv's `enrich` console script next to this interpreter, else `python -m workers.cli`."""
    script = Path(sys.executable).parent / "enrich"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "workers.cli"]


class RssSampler:
    """Polls the resident set size of one PID (and its children) every `interval_s`; keeps the peak."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def watch(self, pid: int | None) -> None:
        self._pid = pid

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            pid = self._pid
            if pid is None:
                continue
            try:
                process = psutil.Process(pid)
                rss = process.memory_info().rss
                rss += sum(child.memory_info().rss for child in process.children(recursive=True))
            except psutil.Error:
                continue
            self.peak_bytes = max(self.peak_bytes, rss)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class WorkerProcess:
    """One worker at a time, restartable; every incarnation appends to the same log file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.rss = RssSampler()
        self.starts: list[float] = []  # wall-clock time of every (re)start
        self.exit_codes: list[int] = []  # of every incarnation that ended, in order
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        if self.is_running():
            raise RuntimeError("worker already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                [*enrich_command(), "worker"], cwd=REPO_ROOT, env={**os.environ, **self.env},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.starts.append(time.time())
        self.rss.watch(self._popen.pid)

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def died(self) -> bool:
        """True when the current incarnation exited without being asked to."""
        return self._popen is not None and self._popen.poll() is not None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no drain, no commit."""
        self._end(signal.SIGKILL, timeout_s=10)

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM (drain, commit, leave the group); SIGKILL if it does not exit in time. Returns the code."""
        return self._end(signal.SIGTERM, timeout_s=timeout_s)

    def _end(self, signum: int, timeout_s: float) -> int:
        popen = self._popen
        if popen is None:
            return 0
        if popen.poll() is None:
            popen.send_signal(signum)
        try:
            code = popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            code = popen.wait(timeout=10)
        self.exit_codes.append(code)
        self._popen = None
        self.rss.watch(None)
        return code

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no worker log)"
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self.kill()
        self.rss.close()
