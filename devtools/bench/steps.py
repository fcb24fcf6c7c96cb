"""The bench's steps, in run order, as a registry: (measure letter, step). `enrich bench --measures`
selects letters; a new pass (e.g. a peer implementation) is one function appended with `register`.

A step reads and adds to one `BenchRun`: `passes` (worker passes by name), `replays` (matched raw
replays), `extra` (anything else the report shows, by name).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.bench.backends import measure_triton_throughput
from devtools.bench.mix import dominant_shape, replay_ort, replay_triton
from devtools.bench.passes import BenchContext, PassResult
from devtools.harness.titles import distinct_titles

__all__ = ["STEPS", "BenchRun", "register"]

CACHE_OFF = {"ENRICH_REDIS_URL": "", "ENRICH_BACKEND": "triton"}
CACHE_ON = {"ENRICH_BACKEND": "triton"}
# Embedded ONNX Runtime with one session thread (1 batch in flight, 1 intra-op thread): the same compute
# threads as the CPU Triton instance (count 1, intra_op_num_threads 1), so (f) compares like with like.
ONNX_ONE_THREAD = {"ENRICH_REDIS_URL": "", "ENRICH_BACKEND": "onnx", "ENRICH_MAX_IN_FLIGHT": "1",
                   "ENRICH_ORT_THREADS": "1"}  # fmt: skip


@dataclass
class BenchRun:
    options: Any  # BenchOptions
    ctx: BenchContext
    titles: list[str]  # the distinct fixture titles
    config: Any  # WorkerConfig: max_batch, max_in_flight, max_wait_ms
    model_dir: Path
    triton_url: str
    triton_threads: int  # intra-op threads of the Triton instance (its config.pbtxt)
    vocab_size: int
    redis_url: str
    passes: dict[str, PassResult] = field(default_factory=dict)
    replays: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return self.options.events or 2000

    def run(self, name: str, count: int, overrides: dict[str, str], titles: list[str] | None = None,
            **kwargs: Any) -> PassResult:  # fmt: skip
        print(f"  pass {name}: {count} events {overrides} ...", flush=True)
        started = time.perf_counter()
        result = self.ctx.backlog_pass(name, titles or self.titles, count, overrides, **kwargs)
        print(f"    {result.events_per_s:,.0f} events/s (pass took {time.perf_counter() - started:.1f} s)",
              flush=True)  # fmt: skip
        self.passes[name] = result
        return result


Step = Callable[[BenchRun], None]
STEPS: list[tuple[str, Step]] = []


def register(measure: str) -> Callable[[Step], Step]:
    """Append a step to the run, selected by `measure` (a letter of --measures)."""

    def add(step: Step) -> Step:
        STEPS.append((measure, step))
        return step

    return add


@register("a")
def model_path(run: BenchRun) -> None:
    # The broker's JVM compiles its hot paths during the first few thousand records: without this warm-up
    # the first pass paid ~2 broker CPU-seconds more, taken from the worker and Triton on these 2 cores.
    run.run("warm-up", min(run.events, 3000), CACHE_OFF)
    run.run("triton-model", run.events, CACHE_OFF)


@register("b")
def batch_of_one(run: BenchRun) -> None:
    run.run("triton-batch1", max(200, run.events // 10), {**CACHE_OFF, "ENRICH_MAX_BATCH": "1"})


@register("c")
def cache_hits(run: BenchRun) -> None:
    """The hit path two ways: the fixture's 297 titles repeated, and all-distinct titles (pre-warmed)."""
    hit_events = run.events * 2 if run.options.quick else max(run.events * 2, 100_000)
    run.run("cache-warm", len(run.titles), CACHE_ON)
    run.run("cache-hit", hit_events, CACHE_ON)
    distinct = distinct_titles(run.options.distinct_titles or hit_events)
    copied = prewarm_distinct(run.redis_url, run.model_dir, distinct)
    print(f"  pre-warmed {copied:,} distinct titles in Redis", flush=True)
    run.run("cache-hit-distinct", len(distinct), CACHE_ON, titles=distinct)


@register("f")
def embedded_onnx(run: BenchRun) -> None:
    run.run("onnx-model", run.events, ONNX_ONE_THREAD)


@register("e")
def scaling(run: BenchRun) -> None:
    """1..N embedded ONNX worker processes (one session thread each) on N cores."""
    if "onnx-model" not in run.passes:
        run.run("onnx-model", run.events, ONNX_ONE_THREAD)
    for workers in range(2, run.options.max_workers + 1):
        run.run(f"onnx-{workers}workers", run.events * workers, ONNX_ONE_THREAD, workers=workers)


@register("a")
def matched_replays(run: BenchRun) -> None:
    """Each model pass's own batch mix replayed against the raw backend it used; perf_analyzer."""
    print("matched replays of the workers' batch mixes ...", flush=True)
    mix = run.passes["triton-model"].mix()
    run.replays["triton-model"] = replay_triton(
        run.triton_url, run.options.triton_model, mix, in_flight=run.config.batch.max_in_flight,
        intra_op_threads=run.triton_threads, vocab_size=run.vocab_size)  # fmt: skip
    if "onnx-model" in run.passes:
        run.replays["onnx-model"] = replay_ort(
            run.model_dir / "model.onnx", run.passes["onnx-model"].mix(), threads=1, intra_op_threads=1,
            vocab_size=run.vocab_size)  # fmt: skip
    rows, seq = dominant_shape(mix)
    # One call at a time: the batch's compute time, the unit of the latency bound (d).
    alone = measure_triton_throughput(
        run.triton_url, run.options.triton_model, batch_size=rows, seq_len=seq, in_flight=1,
        duration_s=run.options.raw_duration_s, warmup_s=0.2, vocab_size=run.vocab_size)  # fmt: skip
    run.extra["batch_compute"] = alone.as_row()
    if run.options.perf_analyzer:
        from devtools.bench.perf_analyzer import run_perf_analyzer

        print(f"perf_analyzer at [{rows},{seq}], {run.config.batch.max_in_flight} in flight ...", flush=True)
        shape = {"batch_size": rows, "seq_len": seq, "concurrency": run.config.batch.max_in_flight}
        outside = run_perf_analyzer(run.triton_url, run.options.triton_model, **shape,
                                    vocab_size=run.vocab_size, work_dir=run.options.out / "perf_analyzer")
        ours = measure_triton_throughput(
            run.triton_url, run.options.triton_model, in_flight=shape["concurrency"], batch_size=rows,
            seq_len=seq, duration_s=run.options.raw_duration_s, warmup_s=0.5, vocab_size=run.vocab_size)
        run.extra["perf_analyzer"] = {**outside.as_row(), "bench_rows_per_s": round(ours.rows_per_s, 1)}


@register("d")
def latency_under_load(run: BenchRun) -> None:
    """Paced passes at fractions of the measured maximum (the triton-model pass)."""
    top = run.passes["triton-model"].events_per_s
    for load in run.options.latency_loads:
        rate = top * load
        name = f"latency-{round(load * 100)}"
        print(f"  pass {name}: {rate:,.0f} events/s for {run.options.latency_duration_s:.0f} s ...",
              flush=True)  # fmt: skip
        run.passes[name] = run.ctx.paced_pass(name, run.titles, rate, run.options.latency_duration_s,
                                              CACHE_OFF)  # fmt: skip


def prewarm_distinct(redis_url: str, model_dir: Path, titles: list[str]) -> int:
    """Cache entries for `titles` ("<fixture title> lot <i>"), each a copy of its fixture title's entry
    (cached by the cache-warm pass) resealed for the new title. The spans' offsets still fit: the suffix
    comes after them. Inferring 100k titles would take minutes of model time for a pass about the cache.
    """
    import redis

    from workers.contract.results import ListingResult
    from workers.model.served import ServedModel
    from workers.stages.cache import ResultCache

    keys = ResultCache(None, ServedModel.load(model_dir).digest, ttl_s=3600)
    client = redis.Redis.from_url(redis_url)
    try:
        bases = sorted({t.rsplit(" lot ", 1)[0] for t in titles})
        cached = dict(zip(bases, client.mget([keys.key_for(b) for b in bases]), strict=True))
        copied = 0
        with client.pipeline(transaction=False) as pipe:
            for title in titles:
                base = title.rsplit(" lot ", 1)[0]
                result = ListingResult.from_bytes(cached[base], base) if cached[base] else None
                if result is None:
                    continue
                pipe.set(keys.key_for(title), result.to_bytes(title), ex=3600)
                copied += 1
            pipe.execute()
    finally:
        client.close()
    if copied < len(titles):
        raise RuntimeError(f"pre-warm: only {copied}/{len(titles)} distinct titles had a cached base entry")
    return copied
