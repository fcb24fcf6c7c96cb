"""`enrich bench`: every measure of issue 6 in one run on one machine, as a table, results.json and PNGs.

    services (Kafka, Redis, Triton on a tmp copy of triton_repo/cpu) -> raw backend ceilings ->
    worker passes (a) efficiency (b) batching (c) cache hits (d) latency (e) scale-out (f) backends
    (s) shadow overhead (w) swap pause
    -> optional pyinstrument profiles of the worker -> report
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.bench import rollout_passes  # noqa: F401  (registers the (s) and (w) steps and rows)
from devtools.bench.backends import BackendThroughput, measure_ort_throughput, measure_triton_throughput
from devtools.bench.passes import BenchContext
from devtools.bench.steps import CACHE_OFF, CACHE_ON, STEPS, BenchRun
from devtools.harness.titles import distinct_titles, fixture_titles
from devtools.paths import FIXTURE_OFFERS, MODELS_DIR, REPO_ROOT, TRITON_CPU_REPO

__all__ = ["BenchOptions", "choose_model", "run_bench", "vocab_size"]


@dataclass(frozen=True)
class BenchOptions:
    model: str = "auto"  # auto: minilm if one is exported under models/, else tiny
    model_dir: Path | None = None  # an exported model directory to use as is (tests)
    events: int | None = None  # per throughput pass; None: ~15 s of the raw Triton rate (2,000-20,000)
    quick: bool = False
    out: Path = REPO_ROOT / "devtools" / "bench" / "results"
    profile: bool = False
    profiler: str = "pyinstrument"  # or cprofile (a .pstats file per profiled pass)
    model_root: Path = MODELS_DIR
    triton_repo: Path = TRITON_CPU_REPO
    triton_url: str | None = None  # an already running Triton (the GPU script); else one is started
    triton_model: str = "attribute_extractor"
    raw_duration_s: float = 4.0
    latency_duration_s: float = 20.0
    measures: frozenset[str] = field(default_factory=lambda: frozenset("abcdefsw"))
    command: str = "enrich bench"
    perf_analyzer: bool = True  # the outside check of raw Triton (fetched on first use)
    distinct_titles: int | None = None  # all-distinct hit pass size; None: as many as the repeated one
    latency_loads: tuple[float, ...] = (0.25, 0.5, 0.9)  # fractions of the measured maximum
    max_workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # scaling curve: 1..N

    @property
    def batch_sizes(self) -> list[int]:
        return [1, 8, 32] if self.quick else [1, 2, 4, 8, 16, 32, 64]

    @property
    def summary(self) -> dict[str, Any]:
        return {"events": self.events, "quick": self.quick, "raw_duration_s": self.raw_duration_s,
                "latency_duration_s": self.latency_duration_s, "measures": "".join(sorted(self.measures))}


def choose_model(options: BenchOptions) -> tuple[Path, str]:
    """The model directory and why it was chosen: an exported MiniLM when there is one, else tiny."""
    from training.build import ensure_model

    if options.model_dir is not None:
        return options.model_dir, f"given directory ({_model_name(options.model_dir)})"
    if options.model in ("auto", "minilm"):
        minilm = _newest_exported(options.model_root, base="minilm")
        if minilm is not None:
            return minilm, f"MiniLM ({minilm.parent.name}/{minilm.name}, exported under models/)"
        if options.model == "minilm":
            raise SystemExit("no exported MiniLM under models/: run `enrich demo --base minilm` or "
                             "`enrich train` + `enrich export` first, or use --model tiny")  # fmt: skip
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reason = "tiny (no exported MiniLM under models/)" if options.model == "auto" else "tiny (--model tiny)"
    return ensure_model(options.model_root, FIXTURE_OFFERS, "tiny"), reason


def _model_name(model_dir: Path) -> str:
    """"<name> <version>, base <base model>" from model_info.json; the folder's name when unreadable."""
    try:
        info = json.loads((model_dir / "model_info.json").read_text())
    except (OSError, ValueError):
        return model_dir.name
    return f"{info.get('name', model_dir.parent.name)} {info.get('version', model_dir.name)}, base " \
           f"{info.get('base_model', '?')}"  # fmt: skip


def _newest_exported(model_root: Path, base: str) -> Path | None:
    """The newest exported model directory (model.onnx + tokenizer + labels) trained from `base`."""
    found = []
    for onnx_path in Path(model_root).glob("*/*/model.onnx"):
        model_dir = onnx_path.parent
        try:
            info = json.loads((model_dir / "model_info.json").read_text())
        except (OSError, ValueError):
            continue
        ready = all((model_dir / n).is_file() for n in ("tokenizer.json", "labels.json"))
        if ready and base in str(info.get("base_model", "")).lower():
            found.append((str(info.get("created_at", "")), model_dir))
    return max(found)[1] if found else None


def _typical_seq_len(model_dir: Path, titles: list[str]) -> int:
    """The sequence bucket most titles fall in: the worker batches each bucket apart, so this is the
    width most of its batches have (the raw sweep's shape; the efficiency uses the recorded mix)."""
    from workers.model.encode import TitleEncoder

    encoder = TitleEncoder.from_model_dir(model_dir)
    buckets = Counter(encoder.pad_to_bucket([enc])[0].shape[1] for enc in encoder.encode(titles))
    return buckets.most_common(1)[0][0]


def _triton_threads(repo: Path, model: str) -> int:
    """intra_op_num_threads of the Triton model's instances (its config.pbtxt); 1 when not stated."""
    try:
        text = (repo / model / "config.pbtxt").read_text()
    except OSError:
        return 1
    found = re.search(r'"intra_op_num_threads".*?string_value:\s*"(\d+)"', text, re.S)
    return int(found.group(1)) if found else 1


def _raw_ceilings(options: BenchOptions, model_dir: Path, triton_url: str, seq_len: int,
                  in_flight: int) -> dict[str, list[BackendThroughput]]:  # fmt: skip
    vocab = vocab_size(model_dir)
    raw: dict[str, list[BackendThroughput]] = {"triton": [], "onnxruntime": []}
    timing = {"duration_s": options.raw_duration_s, "warmup_s": min(1.0, options.raw_duration_s)}
    for batch_size in options.batch_sizes:
        raw["triton"].append(measure_triton_throughput(
            triton_url, options.triton_model, batch_size=batch_size, seq_len=seq_len, in_flight=in_flight,
            **timing, vocab_size=vocab))  # fmt: skip
        if "f" in options.measures:
            raw["onnxruntime"].append(measure_ort_throughput(
                model_dir / "model.onnx", batch_size=batch_size, seq_len=seq_len, concurrency=1,
                **timing, vocab_size=vocab))  # fmt: skip
    return raw


def vocab_size(model_dir: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size()


def run_bench(options: BenchOptions, services: Any = None) -> dict[str, Any]:
    """Run every measure, write results.json + PNGs; returns the results.

    `services`: running Kafka/Redis/Triton to use (anything with `.kafka`, `.redis`, `.triton` like a
    `LocalStack`, e.g. the test suite's fixtures); by default a fresh stack is started and stopped.
    """
    from devtools.bench.report import build_results, print_table, write_results
    from devtools.harness.stack import LocalStack
    from workers.runtime.config import load_config

    config = load_config(None)  # the configured micro-batch and in-flight limit (ENRICH_* or defaults)
    options.out.mkdir(parents=True, exist_ok=True)
    model_dir, reason = choose_model(options)
    print(f"model: {reason}: {model_dir}", flush=True)
    titles = fixture_titles(distinct=True)  # the cache-warm pass produces each title once
    seq_len = _typical_seq_len(model_dir, titles)
    work_dir = Path(tempfile.mkdtemp(prefix="enrich-bench-"))
    try:
        with contextlib.ExitStack() as exits:
            if services is None:
                triton = options.triton_url is None
                print("services: Kafka + Redis" + (" + Triton (CPU)" if triton else "") + " ...", flush=True)
                stack = LocalStack(work_dir / "services", options.triton_repo if triton else None,
                                   triton_model_dir=model_dir if triton else None)  # fmt: skip
                services = exits.enter_context(stack).start()
            raw, bench = _measure(options, services, model_dir, titles, seq_len, config)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results = build_results(options, config, model_dir, reason, seq_len, raw, bench)
    write_results(results, options.out)
    print_table(results)
    return results


def _measure(options: BenchOptions, services: Any, model_dir: Path, titles: list[str], seq_len: int,
             config: Any) -> tuple[dict[str, list[BackendThroughput]], BenchRun]:  # fmt: skip
    triton_url = options.triton_url or services.triton.grpc_url
    pids = {"kafka": [n.process.pid for n in services.kafka.nodes.values() if n.process],
            "redis": [services.redis.process.pid] if services.redis.process else []}
    if getattr(services, "triton", None) is not None and services.triton.process is not None:
        pids["triton"] = [services.triton.process.pid]
    base_env = {"ENRICH_KAFKA_BOOTSTRAP": services.kafka.bootstrap_servers,
                "ENRICH_REDIS_URL": services.redis.url, "ENRICH_MODEL_DIR": str(model_dir),
                "ENRICH_TRITON_URL": triton_url,
                "ENRICH_TRITON_MODEL": options.triton_model, "ENRICH_METRICS_PORT": "-1",
                "ENRICH_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    print(f"raw backends at [batch, {seq_len}] ...", flush=True)
    raw = _raw_ceilings(options, model_dir, triton_url, seq_len, config.batch.max_in_flight)
    if options.events is None:  # ~15 s per pass at the model's pace: MiniLM on CPU is ~10x slower than tiny
        ceiling = max(r.rows_per_s for r in raw["triton"])
        options = dataclasses.replace(options, events=int(min(20_000, max(2_000, ceiling * 15)) // 100 * 100))
        print(f"events per throughput pass: {options.events}", flush=True)
    logs = options.out / "logs"  # every worker's log, kept for reading after the run
    shutil.rmtree(logs, ignore_errors=True)
    bench = BenchRun(options, BenchContext(services.kafka, base_env, logs, pids), titles, config, model_dir,
                     triton_url, _triton_threads(options.triton_repo, options.triton_model),
                     vocab_size(model_dir), services.redis.url)  # fmt: skip
    print("worker passes (`enrich worker` subprocesses):", flush=True)
    for measure, step in STEPS:
        if measure in options.measures:
            step(bench)
    if options.profile:
        _profiles(bench)
    bench.extra["events"] = options.events
    return raw, bench


def _profiles(bench: BenchRun) -> None:
    options, profiles = bench.options, {}
    hit_events = bench.events * 2 if options.quick else max(bench.events * 2, 100_000)
    passes: list[tuple[str, dict[str, str], int, list[str] | None]] = [
        ("profile-model", CACHE_OFF, bench.events, None), ("profile-cache-hit", CACHE_ON, hit_events, None)]
    if "c" in options.measures:  # the judged hit path: all-distinct titles, pre-warmed by measure (c)
        distinct = distinct_titles(options.distinct_titles or hit_events)
        passes.append(("profile-cache-hit-distinct", CACHE_ON, len(distinct), distinct))
    for name, overrides, count, titles in passes:
        path = options.out / f"{name}.{'pstats' if options.profiler == 'cprofile' else 'txt'}"
        bench.run(name, count, overrides, profile_to=path, titles=titles)
        profiles[name] = str(path)
    bench.extra["profiles"] = profiles
