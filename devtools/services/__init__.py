"""Local services for tests, the demo and benchmarks: Kafka (KRaft), redis-server, tritonserver.

Each is started and stopped by our own code, on free loopback ports, with bounded waits and logs kept in
its run folder. Names are imported lazily so `enrich --help` stays fast. The stack of all three is the
harness kit's (devtools.harness.stack.LocalStack).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["KafkaCluster", "RedisServer", "ServiceError", "ServiceStartError", "TritonServer"]

_HOMES = {
    "KafkaCluster": "devtools.services.kafka",
    "RedisServer": "devtools.services.redis_server",
    "ServiceError": "devtools.services.process",
    "ServiceStartError": "devtools.services.process",
    "TritonServer": "devtools.services.triton",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'localservices' has no attribute {name!r}")
