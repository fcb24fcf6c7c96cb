"""`enrich worker` as child processes: the deployed thing (its own interpreter, GIL and event loop),
configured only through ENRICH_* variables, as the bench and the reliability suite both need it.

`WorkerProcess` is one worker, restartable (the reliability suite kills and restarts it; every
incarnation appends to one log), optionally under a profiler (the bench's profiled passes) and with its
peak RSS sampled by a thread. `WorkerPool` is `count` of them in one consumer group, stopped together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from devtools.paths import REPO_ROOT

__all__ = ["RssSampler", "WorkerPool", "WorkerProcess", "enrich_command", "process_usage", "worker_command"]


def enrich_command() -> list[str]:
    """The venv's `enrich` console script next to this interpreter, else `python -m workers.cli`."""
    script = Path(sys.executable).parent / "enrich"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "workers.cli"]


def worker_command(profile_to: Path | None = None) -> list[str]:
    """`enrich worker`, or under cProfile (`*.pstats`: exact call counts and own time per function) or
    pyinstrument (any other suffix: a text report) writing to `profile_to`."""
    if profile_to is None:
        return [*enrich_command(), "worker"]
    if profile_to.suffix == ".pstats":
        return [sys.executable, "-m", "cProfile", "-o", str(profile_to), "-m", "workers.cli", "worker"]
    return [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(profile_to),
            "-m", "workers.cli", "worker"]  # fmt: skip


def process_usage(pid: int) -> tuple[int, int] | None:
    """(resident bytes, open file descriptors) of `pid` and its children; None once it is gone."""
    try:
        process = psutil.Process(pid)
        tree = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in tree), sum(p.num_fds() for p in tree)
    except psutil.Error:
        return None


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
            usage = process_usage(pid)
            if usage is not None:
                self.peak_bytes = max(self.peak_bytes, usage[0])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class WorkerProcess:
    """One worker at a time, restartable; every incarnation appends to the same log file.

    `sample_rss=False` spares the sampler thread where nobody reads the peak (the bench, whose own CPU
    time is one of its figures)."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, profile_to: Path | None = None,
                 sample_rss: bool = True) -> None:  # fmt: skip
        self.env = dict(env)
        self.log_path = log_path
        self.profile_to = profile_to
        self.rss = RssSampler() if sample_rss else None
        self.starts: list[float] = []  # wall-clock time of every (re)start
        self.exit_codes: list[int] = []  # of every incarnation that ended, in order
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def peak_rss_bytes(self) -> int:
        return self.rss.peak_bytes if self.rss is not None else 0

    def start(self) -> WorkerProcess:
        if self.is_running():
            raise RuntimeError("worker already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                worker_command(self.profile_to), cwd=REPO_ROOT, env={**os.environ, **self.env},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.starts.append(time.time())
        if self.rss is not None:
            self.rss.watch(self._popen.pid)
        return self

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def died(self) -> bool:
        """True when the current incarnation exited without being asked to."""
        return self._popen is not None and self._popen.poll() is not None

    def signal(self, signum: int) -> None:
        """Send `signum` without waiting (to stop several workers at once, then `terminate` each)."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signum)

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
        self.signal(signum)
        try:
            code = popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            code = popen.wait(timeout=10)
        self.exit_codes.append(code)
        self._popen = None
        if self.rss is not None:
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
        if self.rss is not None:
            self.rss.close()


class WorkerPool:
    """`count` started workers with one environment (one consumer group), `worker-<i>.log` each in
    `log_dir`, worker ids `<group>-<i>`; stopped together with SIGTERM."""

    def __init__(self, count: int, env: Mapping[str, str], log_dir: Path,
                 profile_to: Path | None = None, metrics_ports: Sequence[int] = ()) -> None:  # fmt: skip
        """`metrics_ports`: one per worker, each serving /metrics on 127.0.0.1 (the bench reads the batch
        mix there); without them the workers keep the environment's ENRICH_METRICS_PORT."""
        def own(i: int) -> dict[str, str]:
            mine = {"ENRICH_WORKER_ID": f"{env['ENRICH_GROUP_ID']}-{i}"}
            if metrics_ports:
                mine.update(ENRICH_METRICS_PORT=str(metrics_ports[i]), ENRICH_METRICS_HOST="127.0.0.1")
            return mine

        self.metrics_urls = [f"http://127.0.0.1:{port}" for port in metrics_ports]
        self.workers = [
            WorkerProcess({**env, **own(i)}, log_dir / f"worker-{i}.log", profile_to=profile_to,
                          sample_rss=False).start()
            for i in range(count)
        ]  # fmt: skip

    @property
    def pids(self) -> list[int]:
        return [pid for worker in self.workers if (pid := worker.pid) is not None]

    def alive(self) -> bool:
        return all(worker.is_running() for worker in self.workers)

    def stop(self, timeout_s: float = 60.0) -> None:
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        for worker in self.workers:
            worker.terminate(timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log_tail(lines)}" for w in self.workers)
