"""The peers pass of `enrich bench`: our worker and the same job on Quix Streams, Faust and Bytewax, one run.

Every contestant is a subprocess configured by the same ENRICH_* variables, against the same broker,
Triton, titles and listing ids, with fresh topics of its own (input: 4 partitions; output: 1 partition
stamped by the broker, `LogAppendTime`, so every contestant's output time is taken by the same clock at
the same point). Two rounds:

  throughput  start it, pass 100 warm-up listings through, then produce N listings at once; events/s
              between the first 5 % of outputs and the last (`steady_rate`), nothing lost, values = ours
  latency     start it again, warm up, then offer the same rate to everyone (half the slowest
              contestant's throughput, so nobody queues); p50/p99 from each listing's event_time (stamped
              as it is produced) to its output's append time
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from devtools.bench.passes import percentile, steady_rate
from devtools.harness.listings import expect_output, listing_records
from devtools.harness.producer import PacedProducer, produce_records
from devtools.harness.reader import OutputCollector, read_events
from devtools.harness.worker_process import enrich_command
from devtools.paths import REPO_ROOT

__all__ = ["CONTESTANTS", "Contestant", "PeersRun", "available", "compare_outputs"]

WARMUP = 100
INPUT_PARTITIONS = 4


@dataclass(frozen=True)
class Contestant:
    name: str
    module: str | None  # None: `enrich worker`
    requires: str  # the import that must work for it to run
    batching: str

    def command(self) -> list[str]:
        if self.module is None:
            return [*enrich_command(), "worker"]
        return [sys.executable, "-m", self.module]


CONTESTANTS = (
    Contestant("ours", None, "workers", "per-bucket batches of ≤ max_batch / max_wait, max_in_flight"),
    Contestant("quix", "devtools.bench.peers.quix", "quixstreams", "one call per listing (no batching)"),
    Contestant("faust", "devtools.bench.peers.faust_peer", "faust",
               "stream.take(max_batch, within=max_wait), concurrency=max_in_flight"),
    Contestant("bytewax", "devtools.bench.peers.bytewax_peer", "bytewax",
               "op.collect(max_size=max_batch, timeout=max_wait), max_in_flight workers"),
)  # fmt: skip


def available(contestants: tuple[Contestant, ...] = CONTESTANTS) -> tuple[list[Contestant], dict[str, str]]:
    """The contestants that can run here, and why each other one cannot (its framework is missing)."""
    ready, skipped = [], {}
    for contestant in contestants:
        try:
            # Imported already: faust replaces its module in sys.modules by one without a __spec__, and
            # find_spec then raises ValueError.
            found = contestant.requires in sys.modules
            found = found or importlib.util.find_spec(contestant.requires) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            ready.append(contestant)
        else:
            skipped[contestant.name] = f"{contestant.requires} is not installed (pip install '.[dev]')"
    return ready, skipped


def _tree_cpu_s(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in (process, *process.children(recursive=True)))
    except psutil.Error:
        return 0.0


@dataclass
class _Running:
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


@contextlib.contextmanager
def _started(contestant: Contestant, env: Mapping[str, str], log_path: Path) -> Iterator[_Running]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(contestant.command(), cwd=REPO_ROOT, env={**os.environ, **env},
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        yield _Running(popen, log_path)
    finally:
        popen.terminate()  # the outputs are read already: no graceful drain is waited for
        try:
            popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=10)


def _listing_id(key: bytes) -> str:
    return key.decode()


def compare_outputs(ours: Mapping[str, dict[str, Any]], theirs: Mapping[str, dict[str, Any]]
                    ) -> tuple[list[str], float]:  # fmt: skip
    """Listing ids whose category or attributes (name, value, character span) differ from ours, and the
    largest confidence difference seen (different padding widths move the last float digits)."""
    differing, max_diff = [], 0.0
    for listing_id, mine in ours.items():
        other = theirs.get(listing_id)
        if other is None:
            continue  # counted as lost, not as a mismatch
        spans = [[(a["name"], a["value"], a["start"], a["end"]) for a in event["attributes"]]
                 for event in (mine, other)]  # fmt: skip
        if mine["category"]["label"] != other["category"]["label"] or spans[0] != spans[1]:
            differing.append(listing_id)
            continue
        pairs = [(mine["category"], other["category"]),
                 *zip(mine["attributes"], other["attributes"], strict=True)]  # fmt: skip
        max_diff = max([max_diff, *(abs(a["confidence"] - b["confidence"]) for a, b in pairs)])
    return differing, max_diff


@dataclass
class PeersRun:
    """One peers pass on running services: `kafka` (create_topic, bootstrap_servers) and an ENRICH_* env."""

    kafka: Any
    base_env: dict[str, str]
    log_dir: Path
    timeout_s: float = 600.0
    _serial: int = 0
    outputs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # contestant -> id -> event

    def _env(self, contestant: Contestant, phase: str) -> tuple[dict[str, str], str, str]:
        self._serial += 1
        stem = f"peers-{os.getpid()}-{self._serial}-{contestant.name}-{phase}"
        self.kafka.create_topic(f"{stem}.in", partitions=INPUT_PARTITIONS)
        self.kafka.create_topic(f"{stem}.out", partitions=1,
                                config={"message.timestamp.type": "LogAppendTime"})  # fmt: skip
        self.kafka.create_topic(f"{stem}.dlq", partitions=1)
        env = {**self.base_env, "ENRICH_INPUT_TOPIC": f"{stem}.in", "ENRICH_OUTPUT_TOPIC": f"{stem}.out",
               "ENRICH_DLQ_TOPIC": f"{stem}.dlq", "ENRICH_GROUP_ID": stem, "ENRICH_WORKER_ID": stem,
               "ENRICH_REDIS_URL": "", "ENRICH_BACKEND": "triton"}  # fmt: skip
        return env, f"{stem}.in", f"{stem}.out"

    def _wait(self, collector: OutputCollector, running: _Running, count: int, what: str) -> None:
        if not collector.wait_for(count, self.timeout_s, running.alive):
            why = "exited" if not running.alive() else f"timed out after {self.timeout_s:.0f} s"
            raise RuntimeError(f"{what}: {collector.count}/{count} outputs ({why})\n{running.log_tail()}")

    def _warm(self, topic: str, titles: list[str], collector: OutputCollector, running: _Running,
              what: str) -> None:  # fmt: skip
        produce_records(self.kafka.bootstrap_servers, topic, listing_records(WARMUP, titles, prefix="warm"))
        self._wait(collector, running, WARMUP, f"{what} warm-up")

    def throughput(self, contestant: Contestant, titles: list[str], events: int) -> dict[str, Any]:
        """Warm up, then N listings at once: events/s, CPU seconds, lost/duplicated/mismatched outputs."""
        env, topic_in, topic_out = self._env(contestant, "throughput")
        collector = OutputCollector(self.kafka.bootstrap_servers, topic_out)
        try:
            with _started(contestant, env, self.log_dir / f"{contestant.name}-throughput.log") as running:
                self._warm(topic_in, titles, collector, running, contestant.name)
                cpu_before = _tree_cpu_s(running.popen.pid)
                produce_records(self.kafka.bootstrap_servers, topic_in,
                                listing_records(events, titles, prefix="peers"), timeout_s=120, linger_ms=20)
                self._wait(collector, running, WARMUP + events, contestant.name)
                cpu_s = _tree_cpu_s(running.popen.pid) - cpu_before
        finally:
            collector.close()
        run_times = [t for k, t in zip(collector.keys, collector.times_ms, strict=True)
                     if k.startswith(b"peers-")]  # fmt: skip
        values = {e["listing_id"]: e for e in read_events(self.kafka.bootstrap_servers, topic_out,
                                                          expected=collector.count, timeout_s=60)
                  if e["listing_id"].startswith("peers-")}  # fmt: skip
        self.outputs[contestant.name] = values
        return {"events": events, "outputs": len(run_times), "distinct_outputs": len(values),
                "lost": events - len(values), "duplicates": len(run_times) - len(values),
                "events_per_s": round(steady_rate(run_times), 1), "cpu_s": round(cpu_s, 2)}  # fmt: skip

    def latency(self, contestant: Contestant, titles: list[str], rate: float, events: int) -> dict[str, Any]:
        """Warm up, then `events` listings at `rate`/s: event_time -> output append time, p50/p99 in ms."""
        env, topic_in, topic_out = self._env(contestant, "latency")
        collector = OutputCollector(self.kafka.bootstrap_servers, topic_out)
        stamps: dict[bytes, int] = {}
        try:
            with _started(contestant, env, self.log_dir / f"{contestant.name}-latency.log") as running:
                self._warm(topic_in, titles, collector, running, contestant.name)
                live = expect_output(listing_records(events, titles, prefix="paced", stamps=stamps))
                producer = PacedProducer(self.kafka.bootstrap_servers, topic_in, live, rate, linger_ms=2)
                if not producer.start().wait(events / rate + 60) or producer.errors:
                    why = producer.errors[:3] or "timed out"
                    raise RuntimeError(f"{contestant.name}: producing failed: {why}")
                self._wait(collector, running, WARMUP + len(stamps), f"{contestant.name} latency")
        finally:
            collector.close()
        latencies = [float(t - stamps[k]) for k, t in zip(collector.keys, collector.times_ms, strict=True)
                     if k in stamps]  # fmt: skip
        return {"offered_per_s": round(rate, 1), "events": len(latencies),
                **{f"p{q}_ms": round(percentile(latencies, q / 100), 1) for q in (50, 99)}}


def peers_pass(run: PeersRun, contestants: list[Contestant], titles: list[str], events: int,
               latency_s: float) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Both rounds for every contestant (ours first: the others' values are checked against it)."""
    rows: dict[str, dict[str, Any]] = {}
    for contestant in contestants:
        print(f"  peers throughput: {contestant.name}, {events} listings ...", flush=True)
        row = rows[contestant.name] = {"batching": contestant.batching,
                                       **run.throughput(contestant, titles, events)}  # fmt: skip
        print(f"    {row['events_per_s']:,.0f} events/s", flush=True)
        if contestant.name != "ours" and "ours" in run.outputs:
            differing, max_diff = compare_outputs(run.outputs["ours"], run.outputs[contestant.name])
            row.update(differing=len(differing), differing_ids=differing[:5],
                       max_confidence_diff=round(max_diff, 6))  # fmt: skip
    # Half the slowest contestant's rate, so nobody queues and the figure is each one's own delay.
    rate = max(1.0, min(row["events_per_s"] for row in rows.values()) / 2)
    paced = max(50, min(events, int(rate * latency_s)))
    for contestant in contestants:
        print(f"  peers latency: {contestant.name}, {paced} listings at {rate:,.0f}/s ...", flush=True)
        rows[contestant.name]["latency"] = run.latency(contestant, titles, rate, paced)
    ours = rows.get("ours")
    for name, row in rows.items():
        if ours is not None and name != "ours":
            row["ours_over_peer"] = {
                "events_per_s": _ratio(ours["events_per_s"], row["events_per_s"]),
                "p50": _ratio(ours["latency"]["p50_ms"], row["latency"]["p50_ms"]),
                "p99": _ratio(ours["latency"]["p99_ms"], row["latency"]["p99_ms"]),
            }  # fmt: skip
    return rows


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def run_peers(options: Any, services: Any = None) -> dict[str, Any]:
    """The peers pass on its own services (or `services`, as `run_bench` takes them); writes peers.json and
    peers.md under `options.out` and prints the table. `options`: a `BenchOptions`."""
    import json
    import shutil
    import tempfile

    from devtools.bench.peers.report import format_peers, peers_results
    from devtools.bench.run import choose_model
    from devtools.harness.stack import LocalStack
    from devtools.harness.titles import fixture_titles

    contestants, skipped = available()
    for name, why in skipped.items():
        print(f"peers: skipping {name}: {why}", flush=True)
    model_dir, reason = choose_model(options)
    events = options.events or 2000
    work_dir = Path(tempfile.mkdtemp(prefix="enrich-peers-"))
    try:
        with contextlib.ExitStack() as exits:
            if services is None:
                print(f"peers: model {reason}; starting Kafka + Triton (CPU) ...", flush=True)
                stack = LocalStack(work_dir / "services", options.triton_repo, triton_model_dir=model_dir)
                services = exits.enter_context(stack).start()
            env = {"ENRICH_KAFKA_BOOTSTRAP": services.kafka.bootstrap_servers,
                   "ENRICH_MODEL_DIR": str(model_dir),
                   "ENRICH_TRITON_URL": options.triton_url or services.triton.grpc_url,
                   "ENRICH_TRITON_MODEL": options.triton_model, "ENRICH_METRICS_PORT": "-1",
                   "ENRICH_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}  # fmt: skip
            run = PeersRun(services.kafka, env, options.out / "logs" / "peers")
            rows = peers_pass(run, contestants, fixture_titles(distinct=True), events,
                              latency_s=5.0 if options.quick else 15.0)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results = peers_results(options, model_dir, reason, events, rows, skipped)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "peers.json").write_text(json.dumps(results, indent=2))
    (options.out / "peers.md").write_text(format_peers(results) + "\n")
    print(format_peers(results), flush=True)
    return results
