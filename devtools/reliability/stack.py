"""Services for `enrich chaos`, started on demand and shared by the scenarios of one command: a one-node
Kafka, a three-node Kafka (broker-failover only), redis-server, tritonserver (triton-outage only)."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from devtools.paths import TRITON_CPU_REPO
from devtools.reliability.run import Services
from devtools.services.kafka import KafkaCluster
from devtools.services.redis_server import RedisServer
from devtools.services.triton import TritonServer

__all__ = ["ChaosStack"]


class ChaosStack:
    def __init__(self, run_dir: Path, model_dir: Path) -> None:
        self.run_dir = run_dir
        self.model_dir = model_dir
        self._exit = ExitStack()
        self._kafka: dict[int, KafkaCluster] = {}
        self._redis: RedisServer | None = None
        self._triton: TritonServer | None = None

    def services_for(self, scenario: str) -> Services:
        kafka = self._kafka_cluster(3 if scenario == "broker-failover" else 1)
        triton = self._triton_server() if scenario == "triton-outage" else None
        return Services(kafka, self._redis_server(), self.model_dir, self.run_dir, triton)

    def _kafka_cluster(self, nodes: int) -> KafkaCluster:
        if nodes not in self._kafka:
            print(f"  starting Kafka ({nodes} node{'s' if nodes > 1 else ''}) ...", flush=True)
            cluster = KafkaCluster(self.run_dir / f"kafka-{nodes}", nodes)
            self._kafka[nodes] = self._exit.enter_context(cluster)
        return self._kafka[nodes]

    def _redis_server(self) -> RedisServer:
        if self._redis is None:
            self._redis = self._exit.enter_context(RedisServer(self.run_dir / "redis"))
        return self._redis

    def _triton_server(self) -> TritonServer:
        if self._triton is None:
            from training.export import fill_triton_repo

            print("  starting tritonserver ...", flush=True)
            repo = self.run_dir / "triton_repo"
            shutil.copytree(TRITON_CPU_REPO, repo, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))  # fmt: skip
            fill_triton_repo(self.model_dir, repo)
            self._triton = self._exit.enter_context(TritonServer(self.run_dir / "triton", repo))
        return self._triton

    def __enter__(self) -> ChaosStack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self._exit.close()
