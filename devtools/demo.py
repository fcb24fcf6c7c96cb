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


@dataclass(frozen=True)
class PassStats:
    listings: int
    seconds: float
    cache_hits: float
    cache_misses: float

    @property
    def throughput(self) -> float:
        return self.listings / self.seconds if self.seconds > 0 else 0.0

    @property
    def hit_rate(self) -> float:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else 0.0


def _run_pass(config: Any, expected: int) -> PassStats:
    """Run one worker until `expected` input records are finished (output, DLQ or stale), then stop it."""
    from workers.runtime.assembly import run_worker
    from workers.runtime.metrics import WorkerMetrics

    metrics = WorkerMetrics()

    def value(name: str) -> float:
        return sum(s.value for m in metrics.registry.collect() if m.name == name for s in m.samples
                   if s.name.endswith("_total"))  # fmt: skip

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(config, stop, metrics=metrics))
        # The pass starts somewhere between the last poll that saw no input and the first that did: timing
        # from the earlier one bounds the duration from above, so a pass shorter than a poll (the warm one
        # finishes in milliseconds) reads as a lower bound on throughput, never as 0 s (issue 13).
        last_idle = time.perf_counter()
        started = None
        while not task.done():
            now = time.perf_counter()
            done = value("enrich_events_out") + value("enrich_dlq") + value("enrich_stale_dropped")
            if started is None:
                if value("enrich_events_in") > 0:
                    started = last_idle
                else:
                    last_idle = now
            if done >= expected:
                break
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        stop.set()
        await task
        return elapsed

    seconds = asyncio.run(main())
    gc.collect()  # the worker's producer lives in reference cycles; free it before the services stop
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
        print(
            f"{label}: {stats.listings} records in at most {stats.seconds * 1000:,.0f} ms = at least "
            f"{stats.throughput:,.0f}/s, cache hit rate {stats.hit_rate:.0%}"
        )
