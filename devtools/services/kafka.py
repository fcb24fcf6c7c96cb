"""Apache Kafka in KRaft mode (combined controller+broker nodes) on loopback ports, from Maven jars.

One node for most tests and the demo; three nodes (RF 3, min.insync.replicas 2) for failover tests, with
`kill_node` / `start_node` to crash and bring back one of them. See kafka_jars.py for the version choice.

Broker settings, chosen for tests on a small machine:
- `auto.create.topics.enable=false` by default, as in production: topics are created explicitly (the
  worker's config names them; `create_topic` here), so a typo in a topic name fails loudly instead of
  silently creating a new topic. Pass `auto_create_topics=True` to change it.
- `group.initial.rebalance.delay.ms=0` and `group.min.session.timeout.ms=1000`, so groups form at once and
  tests may use short session timeouts; internal topics sized for one or three nodes with few partitions
  (creating 50 offset partitions costs seconds on two cores).
- `broker.session.timeout.ms=3000`: a killed broker is fenced (and leaves every ISR) in ~3 s, not 9 s.
- Small JVM heap, serial GC, C1-only JIT: faster start and less CPU on a 2-core machine.
"""

from __future__ import annotations

import base64
import shutil
import signal
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient, NewTopic

from devtools.services.kafka_jars import KAFKA_VERSION, ensure_kafka_libs, find_java
from devtools.services.ports import LOOPBACK, free_ports
from devtools.services.process import ManagedProcess, ServiceError, ServiceStartError, wait_until
from devtools.services.secure import ADMIN_USER, StackSecurity
from workers.runtime.kafka_security import client_config

__all__ = ["KAFKA_VERSION", "KafkaCluster", "KafkaNode"]

_LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
"""


@dataclass
class KafkaNode:
    node_id: int
    broker_port: int
    controller_port: int
    run_dir: Path
    process: ManagedProcess | None = None

    @property
    def bootstrap_server(self) -> str:
        return f"{LOOPBACK}:{self.broker_port}"

    @property
    def properties_path(self) -> Path:
        return self.run_dir / "server.properties"

    @property
    def server_log(self) -> Path:
        return self.run_dir / "server.log"

    def is_running(self) -> bool:
        return self.process is not None and self.process.is_running()


class KafkaCluster:
    """A KRaft Kafka cluster of `nodes` combined controller+broker processes, each under `run_dir`/node-N."""

    def __init__(self, run_dir: Path, nodes: int = 1, *, version: str = KAFKA_VERSION,
                 heap_mb: int | None = None, auto_create_topics: bool = False,
                 broker_config: Mapping[str, str] | None = None, start_timeout_s: float = 120.0,
                 detached: bool = False, security: StackSecurity | None = None) -> None:
        if nodes not in (1, 3):
            raise ValueError(f"nodes must be 1 or 3 (a quorum needs an odd count), got {nodes}")
        self.run_dir = Path(run_dir).resolve()
        self.version = version
        self.heap_mb = heap_mb or (512 if nodes == 1 else 384)
        self.auto_create_topics = auto_create_topics
        self.broker_config = dict(broker_config or {})
        self.start_timeout_s = start_timeout_s
        self.detached = detached
        self.security = security  # SASL_SSL (SCRAM) instead of PLAINTEXT: devtools/services/secure.py
        ports = free_ports(2 * nodes)
        self.nodes = {
            node_id: KafkaNode(node_id, ports[2 * i], ports[2 * i + 1], self.run_dir / f"node-{node_id}")
            for i, node_id in enumerate(range(1, nodes + 1))
        }
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.started_in_s: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_server for node in self.nodes.values())

    @property
    def client_properties(self) -> dict[str, str]:
        """What the cluster's own clients add: the `admin` user over SASL_SSL when secured."""
        return self.security.client_properties(ADMIN_USER) if self.security is not None else {}

    @property
    def replication_factor(self) -> int:
        return len(self.nodes)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> KafkaCluster:
        """Format every node's storage (a new, empty cluster), start all nodes, and wait until each serves
        metadata listing all of them."""
        if any(node.is_running() for node in self.nodes.values()):
            raise ServiceError(f"Kafka cluster in {self.run_dir} is already running")
        started = time.monotonic()
        libs = ensure_kafka_libs(self.version)
        for node in self.nodes.values():
            # A new cluster (fresh id) every start: data left in a reused run folder would not match it.
            shutil.rmtree(node.run_dir / "data", ignore_errors=True)
            node.run_dir.mkdir(parents=True, exist_ok=True)
            node.properties_path.write_text(self._server_properties(node))
            (node.run_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda n: self._format_storage(n, libs), self.nodes.values()))
        try:
            for node in self.nodes.values():
                self._spawn(node, libs)
            self._wait_ready(list(self.nodes.values()), expected_brokers=set(self.nodes))
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - started
        return self

    def stop(self, timeout_s: float = 20.0, *, graceful: bool = True) -> None:
        """SIGTERM every node at once (controlled shutdown), SIGKILL whatever is left after `timeout_s`.

        `graceful=False` SIGKILLs at once: for throwaway multi-node clusters, whose controlled shutdown
        takes seconds as the quorum shrinks under it.
        """
        running = [node.process for node in self.nodes.values() if node.process is not None]
        for process in running:
            if graceful:
                process.signal(signal.SIGTERM)
            else:
                process.kill()
        deadline = time.monotonic() + timeout_s
        for process in running:
            process.stop(timeout_s=max(0.1, deadline - time.monotonic()))

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would (no controlled shutdown)."""
        process = self.nodes[node_id].process
        if process is None:
            raise ServiceError(f"Kafka node {node_id} was never started")
        process.kill()

    def start_node(self, node_id: int) -> None:
        """Restart a stopped or killed node on its old ports and data; wait until every running node's
        metadata lists it again."""
        node = self.nodes[node_id]
        if node.is_running():
            raise ServiceError(f"Kafka node {node_id} is still running")
        self._spawn(node, ensure_kafka_libs(self.version))
        live = [n for n in self.nodes.values() if n.is_running()]
        self._wait_ready(live, expected_brokers={n.node_id for n in live})

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- helpers for tests and the demo -------------------------------------------------------------------

    def admin(self) -> AdminClient:
        """A new AdminClient; keep it referenced until its futures resolve (a collected one never does)."""
        return AdminClient(client_config(self.bootstrap_servers, {"log_level": 0}, self.client_properties))

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int | None = None,
                     config: Mapping[str, str] | None = None, timeout_s: float = 30.0) -> None:
        """Create a topic (RF defaults to the node count) and wait until every partition has a leader."""
        topic = NewTopic(name, num_partitions=partitions,
                         replication_factor=replication_factor or self.replication_factor,
                         config=dict(config or {}))
        admin = self.admin()
        admin.create_topics([topic], request_timeout=timeout_s)[name].result(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            metadata = admin.list_topics(topic=name, timeout=timeout_s).topics.get(name)
            if metadata is not None and metadata.error is None and len(metadata.partitions) == partitions \
                    and all(p.leader >= 0 for p in metadata.partitions.values()):
                return
            if time.monotonic() >= deadline:
                raise ServiceError(f"topic {name!r} has no leader for every partition after {timeout_s} s")
            time.sleep(0.1)

    # ---- internals -----------------------------------------------------------------------------------------

    def _server_properties(self, node: KafkaNode) -> str:
        rf = self.replication_factor
        min_isr = 1 if rf == 1 else 2
        voters = ",".join(f"{n.node_id}@{LOOPBACK}:{n.controller_port}" for n in self.nodes.values())
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{LOOPBACK}:{node.broker_port},CONTROLLER://{LOOPBACK}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{node.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(node.run_dir / "data"),
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            "num.partitions": "1",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            **(self.security.broker_properties(node.broker_port, node.controller_port, LOOPBACK)
               if self.security is not None else {}),
            **self.broker_config,
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _java_argv(self, node: KafkaNode, libs: Path, *main: str) -> list[str]:
        return [
            find_java(), f"-Xmx{self.heap_mb}m", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node.run_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.run_dir}", "-cp", f"{libs}/*", *main,
        ]

    def _format_storage(self, node: KafkaNode, libs: Path) -> None:
        argv = self._java_argv(node, libs, "kafka.tools.StorageTool", "format",
                               f"--cluster-id={self.cluster_id}", "-c", str(node.properties_path),
                               *(self.security.scram_format_args() if self.security is not None else []))
        process = ManagedProcess.spawn(f"kafka-storage-format-{node.node_id}", argv,
                                       log_path=node.run_dir / "format.log", marker=str(node.run_dir))
        if not process.wait_exit(self.start_timeout_s) or process.returncode != 0:
            process.kill()
            raise ServiceStartError(f"kafka StorageTool format failed for node {node.node_id} "
                                    f"(exit {process.returncode}):\n{process.log_tail()}")

    def _spawn(self, node: KafkaNode, libs: Path) -> None:
        argv = self._java_argv(node, libs, "kafka.Kafka", str(node.properties_path))
        node.process = ManagedProcess.spawn(f"kafka-node-{node.node_id}", argv,
                                            log_path=node.run_dir / "stdout.log",
                                            marker=str(node.run_dir), detached=self.detached)

    def _wait_ready(self, nodes: list[KafkaNode], expected_brokers: set[int]) -> None:
        """Ready = each node answers a real metadata request listing every expected broker."""

        def all_serving() -> bool:
            for node in nodes:
                admin = AdminClient(client_config(node.bootstrap_server, {"log_level": 0},
                                                  self.client_properties))
                brokers = set(admin.list_topics(timeout=2).brokers)
                if not expected_brokers <= brokers:
                    return False
            return True

        processes = [node.process for node in nodes if node.process is not None]
        wait_until(processes, all_serving, what="serving metadata", timeout_s=self.start_timeout_s,
                   extra_logs={f"kafka-node-{n.node_id}": n.server_log for n in nodes})
