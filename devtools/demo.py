"""`enrich demo` (its listings, producer and reader are the harness kit's, devtools/harness/).

The demo, on a fresh clone: start Kafka + Redis (+ Triton with `--backend triton`), find or train the
model, create the topics, produce sample listings (a few of them invalid, a few updated), run one worker
until every listing is accounted for, print a table of listings with their attributes and category, then
run a second pass over the same titles (served from the cache) and print throughput and cache hit rates.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from devtools.paths import CACHE_DIR, FIXTURE_OFFERS, MODELS_DIR
from workers.commands import format_event
from workers.runtime.kafka_security import PROPERTIES_FILE_ENV

__all__ = ["DemoOptions", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    count: int = 200
    backend: str = "onnx"
    base: str = "minilm"
    rows: int = 15
    base_dir: Path = CACHE_DIR / "demo"
    model_root: Path = MODELS_DIR
    secure: bool = False  # SASL_SSL Kafka + TLS Redis (`enrich demo --secure`)


# Below this a pass's rate is mostly start-up jitter (the warm pass of 200 cached listings takes a few ms):
# the report says "too short to measure" instead of a number (issue 13).
MIN_MEASURABLE_S = 0.2


@dataclass(frozen=True)
class PassStats:
    listings: int
    seconds: float  # first record consumed -> last attribute event acknowledged (the worker's own stamps)
    cache_hits: float
    cache_misses: float

    @property
    def measurable(self) -> bool:
        return self.seconds >= MIN_MEASURABLE_S

    @property
    def throughput(self) -> float | None:
        return self.listings / self.seconds if self.measurable else None

    @property
    def hit_rate(self) -> float:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else 0.0

    def describe(self) -> str:
        took = f"{self.listings} records in {self.seconds * 1000:,.0f} ms"
        if self.throughput is None:
            rate = f"too short to measure a rate (< {MIN_MEASURABLE_S * 1000:.0f} ms)"
        else:
            rate = f"{self.throughput:,.0f}/s"
        return f"{took} = {rate}, cache hit rate {self.hit_rate:.0%}"


def _run_pass(config: Any, expected: int) -> PassStats:
    """Run one worker until `expected` input records are finished (output, DLQ or stale), then stop it.

    The duration is the worker's own: from its first consumed record to the broker's last acknowledgement
    of an attribute event (gauges stamped inside the worker), not this loop's polling."""
    from workers.runtime.assembly import run_worker
    from workers.runtime.metrics import WorkerMetrics

    metrics = WorkerMetrics()

    def value(name: str) -> float:
        return sum(s.value for m in metrics.registry.collect() if m.name == name for s in m.samples
                   if s.name.endswith("_total"))  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(config, stop, metrics=metrics))
        while not task.done():
            done = value("enrich_events_out") + value("enrich_dlq") + value("enrich_stale_dropped")
            if done >= expected:
                break
            await asyncio.sleep(0.005)
        stop.set()
        await task

    asyncio.run(main())
    gc.collect()  # the worker's producer lives in reference cycles; free it before the services stop
    stamp = metrics.registry.get_sample_value
    first = stamp("enrich_first_consumed_timestamp_seconds")
    last = stamp("enrich_last_output_acked_timestamp_seconds")
    seconds = max(0.0, last - first) if first and last else 0.0
    return PassStats(expected, seconds, value("enrich_cache_hits"), value("enrich_cache_misses"))


def run_demo(options: DemoOptions) -> int:
    from devtools.harness.listings import invalid_samples, sample_listings
    from devtools.harness.producer import produce_records
    from devtools.harness.reader import read_events
    from devtools.harness.stack import LocalStack
    from training.build import ensure_model
    from workers.runtime.config import load_config

    logging.basicConfig(level=logging.ERROR)  # dead-lettering warnings would interleave with the report
    print(f"[1/5] model: finding or training one ({options.base}) ...", flush=True)
    model_dir = ensure_model(options.model_root, FIXTURE_OFFERS, options.base)
    print(f"      {model_dir}")
    triton = options.backend == "triton"
    secured = " over SASL_SSL (SCRAM-SHA-512) + TLS Redis (ACL user)" if options.secure else ""
    print("[2/5] services: Kafka (KRaft) + Redis" + (" + Triton" if triton else "") + secured + " ...",
          flush=True)  # fmt: skip
    with LocalStack(options.base_dir / "run", triton_model_dir=model_dir if triton else None,
                    secure=options.secure) as stack:
        stack.start()
        if stack.security is not None:  # the harness's own clients read it from the environment
            os.environ[PROPERTIES_FILE_ENV] = str(stack.security.client_properties_path)
        run_id = time.strftime("%H%M%S")
        topics = {
            name: f"demo-{run_id}.{name}" for name in ("listings.new", "listings.attributes", "listings.dlq")
        }
        for name, topic in topics.items():
            stack.kafka.create_topic(topic, partitions=3 if name == "listings.new" else 1)
        env = {**stack.env(), "ENRICH_MODEL_DIR": str(model_dir), "ENRICH_METRICS_PORT": "-1",
               "ENRICH_INPUT_TOPIC": topics["listings.new"],
               "ENRICH_OUTPUT_TOPIC": topics["listings.attributes"],
               "ENRICH_DLQ_TOPIC": topics["listings.dlq"], "ENRICH_GROUP_ID": f"demo-{run_id}",
               "ENRICH_COMMIT_INTERVAL_MS": "200", "ENRICH_LOG_LEVEL": "WARNING"}  # fmt: skip
        config = load_config(None, env=env)
        bootstrap = stack.kafka.bootstrap_servers

        listings, invalid = sample_listings(options.count), invalid_samples()
        print(f"[3/5] producing {len(listings)} listings and {len(invalid)} invalid records ...", flush=True)
        produce_records(bootstrap, topics["listings.new"], [*listings, *invalid])
        print("[4/5] worker: first pass (cold cache) ...", flush=True)
        cold = _run_pass(config, len(listings) + len(invalid))
        events = read_events(bootstrap, topics["listings.attributes"], expected=len(listings))
        dead = read_events(bootstrap, topics["listings.dlq"], expected=len(invalid), timeout_s=10)

        print("[5/5] worker: second pass, the same titles as version 2 (warm cache) ...", flush=True)
        produce_records(bootstrap, topics["listings.new"], sample_listings(options.count, version=2))
        warm = _run_pass(replace(config, worker_id=config.worker_id + "-2"), options.count)

    _print_report(events, dead, cold, warm, options.rows)
    return 0


def _print_report(events: list[dict[str, Any]], dead: list[dict[str, Any]], cold: PassStats, warm: PassStats,
                  rows: int) -> None:  # fmt: skip
    print()
    print(f"{'listing':<10} {'ver':<4} {'category (conf.)':<18} {'from':<5}  attributes")
    print("-" * 110)
    for event in sorted(events, key=lambda e: e["listing_id"])[:rows]:
        print(format_event(event))
    print(f"... {max(0, len(events) - rows)} more attribute events")
    print()
    for code, count in sorted(Counter(e["error"]["code"] for e in dead).items()):
        print(f"dead-lettered: {count} x {code}")
    print()
    for label, stats in (("pass 1 (cold cache)", cold), ("pass 2 (warm cache)", warm)):
        print(f"{label}: {stats.describe()}")
