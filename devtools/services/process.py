"""Child processes for the local services: spawn with a log file, bounded waits, stop by our own PID.

Every service runs in its own session (process group led by the PID we spawned), so stopping it can also
reach helper processes it forked (Triton's python-backend stubs) without touching anything else.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "ManagedProcess",
    "ServiceError",
    "ServiceStartError",
    "log_tail",
    "wait_until",
]

_LOG_TAIL_LINES = 60
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_live: set[ManagedProcess] = set()


class ServiceError(RuntimeError):
    """Root of the local-service errors."""


class ServiceStartError(ServiceError):
    """A service exited or did not become ready in time; the message carries its log tail."""


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


# Looked up once here: the child of a fork must not dlopen (another thread may hold the loader's lock).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGKILL when the spawning thread ends."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class ManagedProcess:
    """One service process: either spawned here, or adopted by PID from a state file (`enrich services`).

    `marker` is a string that must appear in the process's command line (its run folder); it guards every
    signal we send to an adopted PID against the PID having been reused by someone else's process.
    """

    def __init__(self, name: str, pid: int, log_path: Path, marker: str,
                 popen: subprocess.Popen[bytes] | None = None) -> None:
        self.name = name
        self.pid = pid
        self.log_path = log_path
        self.marker = marker
        self._popen = popen
        # True once the PID was seen running as our process (spawned here, or marker matched); only then
        # may leftovers of its process group be killed.
        self._verified = popen is not None

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], *, log_path: Path, marker: str,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              detached: bool = False) -> ManagedProcess:
        """Start `argv` with stdout+stderr appended to `log_path`.

        Unless `detached`, the process is also killed when this interpreter exits (atexit), or when the
        thread that spawned it dies in any way (Linux parent-death signal: a test run killed by a timeout
        leaves no JVM behind on a shared machine). So spawn long-lived services from a long-lived thread.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
                preexec_fn=None if detached else _die_with_parent,
            )
        process = cls(name, popen.pid, log_path, marker, popen)
        if not detached:
            _live.add(process)
        return process

    def is_running(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        fields = _proc_stat_fields(self.pid)
        running = fields is not None and fields[0] != "Z" and self.marker in _cmdline(self.pid)
        self._verified = self._verified or running
        return running

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def wait_until(self, check: Callable[[], bool], *, what: str, timeout_s: float,
                   interval_s: float = 0.25, extra_log: Path | None = None) -> float:
        """`wait_until([self], ...)`: poll `check` while this process runs; return the seconds waited."""
        return wait_until([self], check, what=what, timeout_s=timeout_s, interval_s=interval_s,
                          extra_logs={self.name: extra_log} if extra_log is not None else None)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; finally kill leftovers of its process group."""
        self.signal(signal.SIGTERM)
        if not self.wait_exit(timeout_s):
            self.kill()
        self._kill_group_leftovers()
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the process and its process group now, as a crash would."""
        if self.is_running():
            self.signal(signal.SIGKILL)
        self.wait_exit(10.0)
        self._kill_group_leftovers()
        _live.discard(self)

    def signal(self, signum: int) -> None:
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the process to end; True if it did."""
        if self._popen is not None:
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
        else:
            deadline = time.monotonic() + timeout_s
            while self.is_running():
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
        _live.discard(self)
        return True

    def _kill_group_leftovers(self) -> None:
        # Our PID leads its own session, so its process group holds only what it forked.
        if not self._verified:
            return
        for pid in _group_members(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_until(processes: Sequence[ManagedProcess], check: Callable[[], bool], *, what: str,
               timeout_s: float, interval_s: float = 0.25,
               extra_logs: Mapping[str, Path] | None = None) -> float:
    """Poll `check` until it returns True; return the seconds waited.

    Raises ServiceStartError carrying the log tails if any of `processes` exits or the deadline passes.
    Exceptions from `check` count as "not yet" (a starting service fails its probe in many ways); the
    last one is reported on timeout. `extra_logs` maps a process name to a second log of its own.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last_error: BaseException | None = None
    while True:
        for process in processes:
            if not process.is_running():
                problem = f"{process.name} exited (code {process.returncode}) while waiting until {what}"
                raise _start_error([process], problem, last_error, extra_logs)
        try:
            if check():
                return time.monotonic() - started
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            names = ", ".join(f"{p.name} (pid {p.pid})" for p in processes)
            problem = f"{names}: not {what} after {timeout_s:.0f} s"
            raise _start_error(processes, problem, last_error, extra_logs)
        time.sleep(interval_s)


def _start_error(processes: Sequence[ManagedProcess], problem: str, last_error: BaseException | None,
                 extra_logs: Mapping[str, Path] | None) -> ServiceStartError:
    parts = [problem + "."]
    if last_error is not None:
        parts.append(f"Last probe error: {last_error!r}")
    lines = _LOG_TAIL_LINES // len(processes)
    for process in processes:
        parts.append(f"--- last lines of {process.log_path} ---\n{process.log_tail(lines)}")
        extra = (extra_logs or {}).get(process.name)
        if extra is not None:
            parts.append(f"--- last lines of {extra} ---\n{log_tail(extra, lines)}")
    return ServiceStartError("\n".join(parts))


@atexit.register
def _kill_undetached_children() -> None:
    for process in list(_live):
        process.kill()
