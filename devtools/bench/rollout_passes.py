"""Bench measures of the model lifecycle: (s) what a shadow candidate costs the worker, (w) the swap pause.

Both run the embedded ONNX backend at one session thread per model, cache off: the worker pays every
inference itself, the shadow's worst case (on Triton the candidate's inference runs in Triton, the worker
pays tokenizing, comparing and the shadow records). The candidate is a copy of the benched model with one
more key in tokenizer_config.json: another digest (so cache keys, reports and events tell it apart) and
exactly the same compute, so any difference is the shadow's own machinery or the swap itself.

(s) Two passes, same shape: a worker following a control topic is warmed up (and, with a candidate, has
reported the shadow trial), then a backlog is produced and drained; events/s, worker CPU-seconds per
1,000 events, and the shadow's compared/skipped counts from its /metrics.
(w) Paced traffic at half the (s) baseline's rate; `enrich rollout set` (the same `set_desired`) swaps
to the copy at 1/3 of the pass and back at 2/3; the pause is the longest gap between output appends from
the set to the worker's report of the new digest, next to the steady gaps (`swap_rules.swap_pauses`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from devtools.bench.passes import BenchContext, PassResult, steady_rate
from devtools.bench.report import Row, _fmt, _ratio, _verdict, row
from devtools.bench.steps import ONNX_ONE_THREAD, BenchRun, register
from devtools.harness.listings import expect_output, listing_records
from devtools.harness.producer import PacedProducer
from devtools.harness.reader import OutputCollector
from devtools.harness.worker_process import WorkerPool
from devtools.reliability.network_scenarios import scrape
from devtools.reliability.swap_rules import stamp_seconds, swap_pauses
from devtools.services.ports import free_ports
from workers.model.identity import compute_digest
from workers.rollout import RolloutTarget, set_desired
from workers.rollout_trial import set_candidate
from workers.runtime.control import WorkerReport, read_control

__all__ = ["SHADOW_SAMPLE", "candidate_copy", "shadow_pass", "swap_pass"]

SHADOW_SAMPLE = 0.1  # the share the example runs (`enrich rollout shadow CANDIDATE --sample 0.1`)
_WARM = 100  # listings drained before the measured part: session built, trial reported
_REPORT_S = "0.5"
_SET_BY = "enrich bench"


def candidate_copy(model_dir: Path, dest: Path) -> Path:
    """`model_dir` copied to `dest` with another digest and the same compute (see the module docstring)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("model.safetensors", "*.md"))
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config["bench_candidate_of"] = compute_digest(model_dir)
    config_path.write_text(json.dumps(config, indent=2))
    info = json.loads((dest / "model_info.json").read_text())
    info.update(version=f"{info.get('version', '')}-bench-copy", digest=compute_digest(dest))
    (dest / "model_info.json").write_text(json.dumps(info, indent=2))
    return dest


class _RolloutWorker:
    """One `enrich worker` following its own control topic, with fresh in/out/dlq/shadow topics."""

    def __init__(self, ctx: BenchContext, name: str, overrides: dict[str, str]) -> None:
        self.ctx, self.name = ctx, name
        self.topics = ctx._topics(name)
        stem = self.topics[0].removesuffix(".in")
        self.control, self.shadow = f"{stem}.control", f"{stem}.shadow"
        ctx.kafka.create_topic(self.control, 1, config={"cleanup.policy": "compact"})
        ctx.kafka.create_topic(self.shadow, 1)
        self.group = f"bench-{name}-{ctx._serial}"
        self.target = RolloutTarget(ctx.kafka.bootstrap_servers, self.control, self.group, set_by=_SET_BY)
        self.env = ctx._env(self.topics, self.group, {
            **overrides, "ENRICH_CONTROL_TOPIC": self.control, "ENRICH_SHADOW_TOPIC": self.shadow,
            "ENRICH_CONTROL_REPORT_S": _REPORT_S})  # fmt: skip
        self.collector = OutputCollector(ctx.kafka.bootstrap_servers, self.topics[1])
        self.pool: WorkerPool | None = None

    def start(self, titles: list[str]) -> None:
        self.pool = WorkerPool(1, self.env, self.ctx.run_dir / self.name, metrics_ports=free_ports(1))
        self.ctx._backlog(self.topics[0], "warm", titles, _WARM)
        self.ctx._await(self.collector, self.pool, _WARM, self.name)

    def report(self, until: Any, timeout_s: float = 120.0) -> WorkerReport:
        """The worker's first report on the control topic for which `until(report)` holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in read_control(self.ctx.kafka.bootstrap_servers, self.control).values():
                if isinstance(record, WorkerReport) and record.group == self.group and until(record):
                    return record
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: the worker did not report as expected within {timeout_s:.0f} s")

    def metric_total(self, name: str, having: str = "") -> float:
        """The sum of a counter over its labels (the series whose name contains `having`), from /metrics."""
        assert self.pool is not None
        values = scrape(self.pool.metrics_urls[0] + "/metrics", (name,), timeout_s=5)
        if values is None:
            raise RuntimeError(f"{self.name}: the worker's /metrics did not answer")
        return sum(value for series, value in values.items() if having in series)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.stop()
        self.collector.close()


Measured = tuple[PassResult, dict[str, Any]]


def shadow_pass(ctx: BenchContext, name: str, titles: list[str], count: int, overrides: dict[str, str],
                candidate: Path | None, sample: float = SHADOW_SAMPLE) -> Measured:  # fmt: skip
    """Drain `count` listings with (or, `candidate` None, without) a shadow candidate on `sample`."""
    worker = _RolloutWorker(ctx, name, overrides)
    try:
        if candidate is not None:  # before the worker starts: it reads the candidate with the topic's state
            set_candidate(worker.target, "shadow", str(candidate), sample, stale_s=120)
        worker.start(titles)
        if candidate is not None:
            worker.report(lambda r: r.trial.startswith("shadow"))
        assert worker.pool is not None
        cpu_before, started = ctx._cpu(worker.pool.pids), time.perf_counter()
        ctx._backlog(worker.topics[0], name, titles, count)
        ctx._await(worker.collector, worker.pool, _WARM + count, name)
        seconds = time.perf_counter() - started
        cpu = {k: round(v - cpu_before[k], 2) for k, v in ctx._cpu(worker.pool.pids).items()}
        shadow = {"sample": sample if candidate is not None else 0.0,
                  "compared": worker.metric_total("enrich_shadow_compared_total"),
                  "skipped": worker.metric_total("enrich_shadow_skipped_total")}  # fmt: skip
    finally:
        worker.close()
    rate = steady_rate(worker.collector.times_ms[_WARM:])
    hits = worker.collector.hits
    return PassResult(name, count, 1, rate, round(seconds, 3), hits, cpu, dict(overrides)), shadow


def swap_pass(ctx: BenchContext, name: str, titles: list[str], rate: float, duration_s: float,
              overrides: dict[str, str], models: tuple[Path, Path]) -> Measured:  # fmt: skip
    """Paced traffic; `rollout set` to models[1] at 1/3 of the pass and back to models[0] at 2/3."""
    worker = _RolloutWorker(ctx, name, overrides)
    windows: list[tuple[float, float]] = []
    try:
        worker.start(titles)
        assert worker.pool is not None
        live = expect_output(listing_records(None, titles, prefix=name))
        producer = PacedProducer(ctx.kafka.bootstrap_servers, worker.topics[0], live, rate,
                                 duration_s=duration_s, linger_ms=2)  # fmt: skip
        cpu_before, started = ctx._cpu(worker.pool.pids), time.perf_counter()
        producer.start()
        for index, model_dir in enumerate((models[1], models[0])):
            time.sleep(max(0.0, started + duration_s * (index + 1) / 3 - time.perf_counter()))
            digest = compute_digest(model_dir)
            set_at = time.time()
            set_desired(worker.target, str(model_dir), wait_s=0, stale_s=60)
            report = worker.report(
                lambda r, d=digest, t=set_at: r.digest == d and stamp_seconds(r.reported_at) >= t)
            windows.append((set_at, stamp_seconds(report.reported_at)))
        if not producer.wait(duration_s + 60) or producer.errors:
            raise RuntimeError(f"{name}: producing failed: {producer.errors[:3] or 'timed out'}")
        produced = _WARM + producer.produced
        ctx._await(worker.collector, worker.pool, produced, name)
        seconds = time.perf_counter() - started
        cpu = {k: round(v - cpu_before[k], 2) for k, v in ctx._cpu(worker.pool.pids).items()}
        swaps = worker.metric_total("enrich_model_swaps_total", 'outcome="done"')
    finally:
        worker.close()
    times = [t / 1000 for t in worker.collector.times_ms[_WARM:]]
    pauses = swap_pauses(times, windows)
    details = {"pause_ms": pauses.per_swap_ms, "swaps_done": swaps,
               "swap_s": [round(end - start, 3) for start, end in windows],
               "steady_gap_ms": {"median": pauses.median_gap_ms, "p99": pauses.p99_gap_ms,
                                 "max": pauses.max_gap_ms}}  # fmt: skip
    result = PassResult(name, len(times), 1, producer.achieved_rate, round(seconds, 3), worker.collector.hits,
                        cpu, dict(overrides))  # fmt: skip
    return result, details


@register("s")
def shadow_overhead(run: BenchRun) -> None:
    candidate = candidate_copy(run.model_dir, run.options.out / "candidate-model")
    for name, trial in (("rollout-base", None), ("rollout-shadow", candidate)):
        print(f"  pass {name}: {run.events} events {ONNX_ONE_THREAD}"
              f"{f' + shadow on {SHADOW_SAMPLE:.0%}' if trial else ''} ...", flush=True)  # fmt: skip
        result, shadow = shadow_pass(run.ctx, name, run.titles, run.events, ONNX_ONE_THREAD, trial)
        print(f"    {result.events_per_s:,.0f} events/s", flush=True)
        run.passes[name] = result
        run.extra[f"{name}-shadow"] = shadow


@register("w")
def swap_pause(run: BenchRun) -> None:
    if "rollout-base" not in run.passes:
        run.passes["rollout-base"] = shadow_pass(run.ctx, "rollout-base", run.titles, run.events,
                                                 ONNX_ONE_THREAD, None)[0]  # fmt: skip
    candidate = run.options.out / "candidate-model"
    if not (candidate / "model_info.json").is_file():
        candidate_copy(run.model_dir, candidate)
    rate = run.passes["rollout-base"].events_per_s / 2
    duration = run.options.latency_duration_s * 1.5
    print(f"  pass rollout-swap: {rate:,.0f} events/s for {duration:.0f} s, two `rollout set` swaps ...",
          flush=True)  # fmt: skip
    result, details = swap_pass(run.ctx, "rollout-swap", run.titles, rate, duration, ONNX_ONE_THREAD,
                                (run.model_dir, candidate))  # fmt: skip
    print(f"    swap pauses {details['pause_ms']} ms, steady gaps {details['steady_gap_ms']}", flush=True)
    run.passes["rollout-swap"] = result
    run.extra["swap"] = details


def _per_1k(p: dict[str, Any]) -> float:
    return p["cpu_s"].get("workers", 0.0) * 1000 / p["events"] if p["events"] else 0.0


@row
def _s_shadow(r: dict[str, Any]) -> list[Row]:
    base, shadow = r["passes"].get("rollout-base"), r["passes"].get("rollout-shadow")
    stats = r["extra"].get("rollout-shadow-shadow")
    if not base or not shadow or not stats:
        return []
    figures = (f"{_fmt(shadow['events_per_s'])} vs {_fmt(base['events_per_s'])}; worker CPU "
               f"{_per_1k(shadow):.2f} vs {_per_1k(base):.2f} s per 1,000 events "
               f"(+{_per_1k(shadow) / max(_per_1k(base), 1e-9) - 1:.0%}); compared {stats['compared']:,.0f}, "
               f"skipped {stats['skipped']:,.0f} of ~{stats['sample'] * shadow['events']:,.0f} sampled")
    return [(f"(s) shadow overhead: candidate on {stats['sample']:.0%} of listings vs none "
             "(embedded ORT, 1 thread per model)", figures, "report",
             _verdict(_ratio(shadow["events_per_s"], base["events_per_s"]), None, "×"))]  # fmt: skip


@row
def _w_swap(r: dict[str, Any]) -> list[Row]:
    swap, p = r["extra"].get("swap"), r["passes"].get("rollout-swap")
    if not swap or not p:
        return []
    steady = swap["steady_gap_ms"]
    figures = (f"{', '.join(f'{ms:.0f} ms' for ms in swap['pause_ms'])} (set → report "
               f"{', '.join(f'{s:.2f} s' for s in swap['swap_s'])}) at {_fmt(p['events_per_s'])}; "
               f"steady gaps median {steady['median']:.0f} ms, p99 {steady['p99']:.0f} ms")
    worst = max(swap["pause_ms"], default=None)
    return [("(w) swap pause: longest output gap during `rollout set` (embedded ORT, paced at 50 %)", figures,
             "report", _verdict(_ratio(worst, steady["p99"]), None, "× steady p99"))]  # fmt: skip
