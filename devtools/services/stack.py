"""`enrich services` specifics of the one local stack (devtools.harness.stack.LocalStack): the state file
that finds a detached stack's processes again, stopping them from it, and which models a repository
serves."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devtools.harness.stack import LocalStack
from devtools.services.kafka import KAFKA_VERSION
from devtools.services.process import ManagedProcess
from devtools.services.triton import remove_shm_regions

__all__ = ["adopt_processes", "exported_models", "stack_state", "stop_from_state"]


def exported_models(model_repository: Path) -> list[str]:
    """Models in a repository whose weights were exported (a version folder holds model.onnx)."""
    return sorted(p.parent.parent.name for p in Path(model_repository).glob("*/*/model.onnx")
                  if (p.parent.parent / "config.pbtxt").exists())


def stack_state(stack: LocalStack) -> dict[str, Any]:
    """What `enrich services down|status` needs to find a started stack's processes again: PIDs, markers,
    ports, and the worker's ENRICH_* settings."""
    kafka, redis, triton = stack.kafka, stack.redis, stack.triton
    services: dict[str, dict[str, Any]] = {}
    for node in kafka.nodes.values():
        services[f"kafka-node-{node.node_id}"] = _process_state(
            node.process, broker_port=node.broker_port, started_in_s=kafka.started_in_s)
    services["redis"] = _process_state(redis.process, port=redis.port, started_in_s=redis.started_in_s)
    state: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_dir": str(stack.base_dir),
        "kafka_version": KAFKA_VERSION,
        "services": services,
        "env": stack.env(),
    }
    if stack.security is not None:
        state["security"] = {"ca": str(stack.security.ca_path),
                             "kafka_client_properties": str(stack.security.client_properties_path)}
    if triton is not None:
        services["tritonserver"] = _process_state(
            triton.process, grpc_port=triton.grpc_port, started_in_s=triton.started_in_s,
            http_port=triton.http_port, metrics_url=triton.metrics_url, models=triton.models)
        state["triton_shm_prefix"] = triton.shm_prefix
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
