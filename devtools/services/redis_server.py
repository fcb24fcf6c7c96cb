"""A throwaway redis-server (Debian's binary) on a free loopback port, no persistence."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from devtools.services.ports import LOOPBACK, free_port
from devtools.services.process import ManagedProcess, ServiceError
from devtools.services.secure import StackSecurity

__all__ = ["RedisServer", "StartStopContext", "find_redis_server", "redis_server_version"]


def find_redis_server(program: str = "redis-server") -> str:
    """The path of `program` (redis-server, or redis-cli which comes with it)."""
    path = shutil.which(program)
    if path is None:
        raise ServiceError(f"No `{program}` found. Run `make setup` (scripts/bootstrap.sh installs the "
                           "Debian package redis-server, which brings redis-cli).")
    return path


def redis_server_version() -> str:
    """E.g. '7.0.15' (from `redis-server --version`)."""
    argv = [find_redis_server(), "--version"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return next((word[2:] for word in out.split() if word.startswith("v=")), out.strip())


class StartStopContext:
    """`with service:` starts it and stops it at the end."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, timeout_s: float = 10.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class RedisServer(StartStopContext):
    """redis-server with `--save '' --appendonly no` in `run_dir`; ready when it answers PING.

    `port` (default: a free one) and `extra_args` (more `--name value` options, e.g. cluster mode) serve
    `RedisClusterServers`, which starts several. `security`: TLS only, ACL user (devtools/services/secure.py).
    """

    def __init__(self, run_dir: Path, *, start_timeout_s: float = 30.0, detached: bool = False,
                 port: int | None = None, extra_args: Sequence[str] = (),
                 security: StackSecurity | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.port = port if port is not None else free_port()
        self.extra_args = tuple(extra_args)
        self.start_timeout_s = start_timeout_s
        self.detached = detached
        self.security = security
        self.process: ManagedProcess | None = None
        self.started_in_s: float | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"{'rediss' if self.security is not None else 'redis'}://{LOOPBACK}:{self.port}/0"

    def client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments for this server (TLS and the ACL user when secured)."""
        if self.security is None:
            return {}
        return {"ssl": True, **self.security.redis_client_options()}

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5, **self.client_options())

    def start(self) -> Self:
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(self.port)] if self.security is None else self.security.redis_args(self.port)
        argv = [
            find_redis_server(), "--bind", LOOPBACK, *listen, "--save", "",
            "--appendonly", "no", "--dir", str(self.run_dir), "--daemonize", "no",
            "--protected-mode", "yes", "--logfile", "",
            # Keep the original command line (with the run folder in it): `enrich services down` checks it
            # before signalling a PID from the state file.
            "--set-proc-title", "no", *self.extra_args,
        ]
        self.process = ManagedProcess.spawn("redis-server", argv, log_path=self.run_dir / "redis.log",
                                            marker=str(self.run_dir), detached=self.detached)
        probe = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1, socket_connect_timeout=1,
                            **self.client_options())
        try:
            self.process.wait_until(lambda: bool(probe.ping()), what="answering PING",
                                    timeout_s=self.start_timeout_s, interval_s=0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            probe.close()
        self.started_in_s = time.monotonic() - started
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(timeout_s)
