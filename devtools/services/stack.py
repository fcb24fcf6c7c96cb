"""The whole local stack for the demo, benchmarks and `enrich services`: Kafka + Redis (+ Triton).

    with LocalStack(base_dir, triton_repo=Path("triton_repo/cpu")) as stack:
        stack.kafka.bootstrap_servers, stack.redis.url, stack.triton.grpc_url, stack.env()
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from devtools.services.kafka import KAFKA_VERSION, KafkaCluster
from devtools.services.process import ManagedProcess
from devtools.services.redis_server import RedisServer
from devtools.services.triton import TritonServer, remove_shm_regions

__all__ = ["LocalStack", "adopt_processes", "exported_models", "stop_from_state"]


def exported_models(model_repository: Path) -> list[str]:
    """Models in a repository whose weights were exported (a version folder holds model.onnx)."""
    return sorted(p.parent.parent.name for p in Path(model_repository).glob("*/*/model.onnx")
                  if (p.parent.parent / "config.pbtxt").exists())


class LocalStack:
    """Kafka (1 or 3 nodes) and Redis, plus Triton when `triton_repo` is given, each in `base_dir`/<name>."""

    def __init__(self, base_dir: Path, triton_repo: Path | None = None, *, kafka_nodes: int = 1,
                 triton_models: Sequence[str] | None = None, detached: bool = False) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.kafka = KafkaCluster(self.base_dir / "kafka", nodes=kafka_nodes, detached=detached)
        self.redis = RedisServer(self.base_dir / "redis", detached=detached)
        self.triton = (TritonServer(self.base_dir / "triton", triton_repo, models=triton_models,
                                    detached=detached) if triton_repo is not None else None)

    def start(self) -> LocalStack:
        try:
            self.kafka.start()
            self.redis.start()
            if self.triton is not None:
                self.triton.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.triton is not None:
            self.triton.stop()
        self.redis.stop()
        self.kafka.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The worker's ENRICH_* settings pointing at this stack."""
        env = {"ENRICH_KAFKA_BOOTSTRAP": self.kafka.bootstrap_servers, "ENRICH_REDIS_URL": self.redis.url}
        if self.triton is not None:
            env["ENRICH_TRITON_URL"] = self.triton.grpc_url
            env["ENRICH_BACKEND"] = "triton"
        return env

    def state(self) -> dict[str, Any]:
        """What `enrich services down|status` needs to find the processes again: PIDs, markers, ports."""
        services: dict[str, dict[str, Any]] = {}
        for node in self.kafka.nodes.values():
            services[f"kafka-node-{node.node_id}"] = _process_state(
                node.process, broker_port=node.broker_port, started_in_s=self.kafka.started_in_s)
        services["redis"] = _process_state(self.redis.process, port=self.redis.port,
                                           started_in_s=self.redis.started_in_s)
        state: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "base_dir": str(self.base_dir),
            "kafka_version": KAFKA_VERSION,
            "services": services,
            "env": self.env(),
        }
        if self.triton is not None:
            services["tritonserver"] = _process_state(
                self.triton.process, grpc_port=self.triton.grpc_port, started_in_s=self.triton.started_in_s,
                http_port=self.triton.http_port, metrics_url=self.triton.metrics_url,
                models=self.triton.models)
            state["triton_shm_prefix"] = self.triton.shm_prefix
        return state


def _process_state(process: ManagedProcess | None, **extra: Any) -> dict[str, Any]:
    if process is None:
        raise ValueError("service was not started")
    if isinstance(extra.get("started_in_s"), float):
        extra["started_in_s"] = round(extra["started_in_s"], 2)
    return {"pid": process.pid, "marker": process.marker, "log": str(process.log_path), **extra}


def adopt_processes(state: dict[str, Any]) -> dict[str, ManagedProcess]:
    """ManagedProcess handles for the PIDs in a state file (signals are guarded by each marker)."""
    return {name: ManagedProcess(name, info["pid"], Path(info["log"]), info["marker"])
            for name, info in state["services"].items()}


def stop_from_state(state_path: Path, timeout_s: float = 30.0) -> list[str]:
    """Stop every process in a state file by PID (SIGTERM all, then SIGKILL); return their names."""
    state = json.loads(state_path.read_text())
    processes = adopt_processes(state)
    for process in processes.values():
        process.signal(15)
    deadline = time.monotonic() + timeout_s
    for process in processes.values():
        process.stop(timeout_s=max(0.1, deadline - time.monotonic()))
    if state.get("triton_shm_prefix"):
        remove_shm_regions(state["triton_shm_prefix"])
    state_path.unlink()
    return list(processes)
