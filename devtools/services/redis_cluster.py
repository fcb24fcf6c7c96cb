"""A throwaway Redis Cluster: several `RedisServer`s in cluster mode on free loopback ports, no replicas.

The slots are assigned by `redis-cli --cluster create` (Debian's redis-tools, installed with redis-server);
the cluster is ready when every node reports `cluster_state:ok` with all 16384 slots assigned and every
other node known (the gossip that spreads the slot map takes a moment after `create` returns).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Self

import redis
from redis.cluster import RedisCluster

from devtools.services.ports import LOOPBACK, free_ports
from devtools.services.process import ServiceStartError, wait_until
from devtools.services.redis_server import RedisServer, StartStopContext, find_redis_server

__all__ = ["RedisClusterServers"]

_SLOTS = 16384


class RedisClusterServers(StartStopContext):
    """`masters` redis-servers (default 3) forming one cluster; `.url` names one node, clients find the rest.

    Each node's cluster bus port is chosen free too (`--cluster-port`), not the default port + 10000,
    which can fall outside the port range or onto someone else's port. `nodes.conf` stays in each node's
    run folder, so `nodes[i].stop()` then `nodes[i].start()` brings the same node back into the cluster.
    """

    def __init__(self, run_dir: Path, *, masters: int = 3, start_timeout_s: float = 30.0,
                 detached: bool = False) -> None:
        if masters < 3:
            raise ValueError(f"redis-cli --cluster create needs at least 3 masters, got {masters}")
        self.run_dir = Path(run_dir).resolve()
        self.start_timeout_s = start_timeout_s
        ports = free_ports(2 * masters)  # all at once: no port handed out twice
        self.nodes = [
            RedisServer(
                self.run_dir / f"node-{i}", start_timeout_s=start_timeout_s, detached=detached,
                port=ports[2 * i],
                extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-port", str(ports[2 * i + 1])),
            )
            for i in range(masters)
        ]  # fmt: skip
        self.started_in_s: float | None = None

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self) -> RedisCluster:
        return RedisCluster(host=LOOPBACK, port=self.nodes[0].port, socket_timeout=5)

    def start(self) -> Self:
        started = time.monotonic()
        try:
            for node in self.nodes:
                node.start()
            self._create()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - started
        return self

    def wait_ready(self) -> None:
        """Until every node serves and agrees on every slot (e.g. after `nodes[i].start()` again)."""
        processes = [node.process for node in self.nodes if node.process is not None]
        wait_until(processes, self._all_agree, what="agreeing on one cluster with every slot served",
                   timeout_s=self.start_timeout_s, interval_s=0.05)

    def _create(self) -> None:
        addresses = [f"{LOOPBACK}:{node.port}" for node in self.nodes]
        argv = [find_redis_server("redis-cli"), "--cluster", "create", *addresses, "--cluster-replicas", "0",
                "--cluster-yes"]
        log_path = self.run_dir / "cluster-create.log"
        with log_path.open("ab") as log:
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=self.start_timeout_s, check=False)
        if done.returncode != 0:
            raise ServiceStartError(f"`{' '.join(argv)}` exited with {done.returncode}; see {log_path}:\n"
                                    + log_path.read_text(errors="replace")[-4000:])

    def _all_agree(self) -> bool:
        for node in self.nodes:
            probe = redis.Redis(host=LOOPBACK, port=node.port, socket_timeout=1, socket_connect_timeout=1)
            try:
                info = probe.cluster("INFO")
            finally:
                probe.close()
            if (info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != _SLOTS
                    or int(info["cluster_known_nodes"]) != len(self.nodes)):
                return False
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout_s)
