"""The one local service stack of the demo, the bench, the reliability suite and `enrich services up`:
Kafka (1 or 3 nodes), redis-server and, when configured, tritonserver, each in `base_dir`/<name>.

    with LocalStack(base_dir, triton_model_dir=model_dir) as stack:
        stack.start()  # or let each service start when first used
        stack.kafka.bootstrap_servers, stack.redis.url, stack.triton.grpc_url, stack.env()

Services start lazily, on first use, because the reliability suite shares one stack between scenarios
and only some of them need a three-node cluster or Triton (each costs seconds to start on two cores);
`start()` starts the default set at once (the demo, the bench, `enrich services up`). A service dies with
the thread that started it (parent-death signal), so use the stack from the thread that outlives it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from devtools.paths import TRITON_CPU_REPO
from devtools.services.kafka import KafkaCluster
from devtools.services.redis_server import RedisServer
from devtools.services.secure import StackSecurity
from devtools.services.triton import TritonServer
from workers.runtime.kafka_security import PROPERTIES_FILE_ENV

__all__ = ["LocalStack", "prepare_triton_repo"]

_Service = TypeVar("_Service", KafkaCluster, RedisServer, TritonServer)


def prepare_triton_repo(model_dir: Path, dest: Path, source: Path = TRITON_CPU_REPO) -> Path:
    """A copy of the Triton CPU repository `source` at `dest`, filled with the model in `model_dir`.

    Only the template is copied (config.pbtxt, 1/model.py): versions `enrich export` added to `source`
    stay there, and the model becomes version 1 of a fresh `dest` (or the next version of a reused one).
    A version policy `enrich rollout` wrote into `source` names `source`'s versions, not these: dropped.
    """
    from training.export import SERVED_FILES, fill_triton_repo
    from workers.triton_policy import without_version_policy, write_atomically

    def template_only(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in SERVED_FILES or n == "__pycache__"}
        return skipped | {n for n in names if n.isdigit() and n != "1" and Path(folder, n).is_dir()}

    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=template_only)
    for config_path in dest.glob("*/config.pbtxt"):
        text = config_path.read_text()
        if (kept := without_version_policy(text)) != text:
            write_atomically(config_path, kept)
    fill_triton_repo(model_dir, dest)
    return dest


class LocalStack:
    """Kafka (`kafka_nodes` by default; `kafka_cluster(n)` for another size, kept alongside) and Redis,
    plus Triton when a repository or a model is given: `triton_repo` is served as it is, unless
    `triton_model_dir` is given too, in which case a copy of it (default triton_repo/cpu) under
    `base_dir` is filled with that model first. `announce` hears each service before it starts."""

    def __init__(self, base_dir: Path, triton_repo: Path | None = None, *, kafka_nodes: int = 1,
                 triton_model_dir: Path | None = None, triton_models: Sequence[str] | None = None,
                 detached: bool = False, announce: Callable[[str], None] | None = None,
                 secure: bool = False) -> None:  # fmt: skip
        self.base_dir = Path(base_dir).resolve()
        # SASL_SSL Kafka + TLS/ACL Redis with certificates and passwords made now (services/secure.py)
        self.security = StackSecurity.create(self.base_dir / "security") if secure else None
        self.kafka_nodes = kafka_nodes
        self.triton_repo = triton_repo
        self.triton_model_dir = triton_model_dir
        self.triton_models = triton_models
        self.detached = detached
        self._announce = announce or (lambda what: None)
        self._kafka: dict[int, KafkaCluster] = {}
        self._redis: RedisServer | None = None
        self._triton: TritonServer | None = None
        self._started: list[KafkaCluster | RedisServer | TritonServer] = []  # in start order

    # ---- the services, each started on first use ------------------------------------------------------

    def kafka_cluster(self, nodes: int | None = None) -> KafkaCluster:
        nodes = nodes or self.kafka_nodes
        if nodes not in self._kafka:
            self._announce(f"Kafka ({nodes} node{'s' if nodes > 1 else ''})")
            name = "kafka" if nodes == self.kafka_nodes else f"kafka-{nodes}"
            cluster = KafkaCluster(self.base_dir / name, nodes=nodes, detached=self.detached,
                                   security=self.security)
            self._kafka[nodes] = self._start(cluster)
        return self._kafka[nodes]

    @property
    def kafka(self) -> KafkaCluster:
        return self.kafka_cluster()

    @property
    def redis(self) -> RedisServer:
        if self._redis is None:
            self._announce("redis-server")
            self._redis = self._start(RedisServer(self.base_dir / "redis", detached=self.detached,
                                                  security=self.security))
        return self._redis

    @property
    def serves_triton(self) -> bool:
        return self.triton_repo is not None or self.triton_model_dir is not None

    @property
    def triton(self) -> TritonServer | None:
        """tritonserver, when the stack serves one (else None)."""
        if self._triton is None and self.serves_triton:
            self._announce("tritonserver")
            repo = self.triton_repo
            if self.triton_model_dir is not None:
                repo = prepare_triton_repo(self.triton_model_dir, self.base_dir / "triton_repo",
                                           repo or TRITON_CPU_REPO)  # fmt: skip
            assert repo is not None
            server = TritonServer(self.base_dir / "triton", repo, models=self.triton_models,
                                  detached=self.detached)  # fmt: skip
            self._triton = self._start(server)
        return self._triton

    def _start(self, service: _Service) -> _Service:
        self._started.append(service)  # first: `stop` also cleans up after a failed start
        service.start()
        return service

    # ---- all at once ----------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        """Start the default set now: Kafka, Redis and Triton if configured (all stopped if one fails)."""
        try:
            _ = self.kafka, self.redis, self.triton
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every service started, last started first."""
        while self._started:
            self._started.pop().stop()
        self._kafka.clear()
        self._redis = self._triton = None

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()

    def env(self) -> dict[str, str]:
        """The worker's ENRICH_* settings pointing at this stack."""
        env = {"ENRICH_KAFKA_BOOTSTRAP": self.kafka.bootstrap_servers, "ENRICH_REDIS_URL": self.redis.url}
        if self.security is not None:
            env[PROPERTIES_FILE_ENV] = str(self.security.client_properties_path)
            env.update(self.security.redis_env())
        triton = self.triton
        if triton is not None:
            env["ENRICH_TRITON_URL"] = triton.grpc_url
            env["ENRICH_BACKEND"] = "triton"
        return env
