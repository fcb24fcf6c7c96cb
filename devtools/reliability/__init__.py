"""Reliability harness (`enrich chaos`): fault scenarios against a real worker, broker, Redis and Triton.

Each scenario runs `enrich worker` as a subprocess, produces listings with unique ids, injects faults
(kill -9, service outages, broker failover, hostile inputs), then reads the output and dead-letter topics
to the end and accounts for every produced record: lost, duplicated, recovery time, peak RSS.
"""

__all__: list[str] = []
