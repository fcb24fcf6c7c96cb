"""`enrich bench`: the benchmark of issue 6 (heavy imports inside the handler)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmark: efficiency vs matched raw replays, batching, cache hits, latency, scaling, backends",
        description="Starts its own Kafka, Redis and Triton, runs `enrich worker` subprocesses against them "
        "and prints one table (measure, figures, target, ratio); writes results.json and PNG plots.",
    )
    bench.add_argument("--model", choices=("auto", "tiny", "minilm"), default="auto",
                       help="auto (default): an exported MiniLM under models/ if there is one, else tiny")
    bench.add_argument("--model-dir", type=Path, default=None,
                       help="use this exported model directory instead of looking under models/")
    bench.add_argument("--events", type=int, default=None,
                       help="events per throughput pass (default: ~15 s at the raw model rate, 2,000-20,000; "
                            "2000 with --quick)")
    bench.add_argument("--quick", action="store_true", help="small sizes and short durations")
    bench.add_argument("--out", type=Path, default=Path("devtools/bench/results"), help="results folder")
    bench.add_argument("--profile", action="store_true",
                       help="also run the worker under pyinstrument (model path, cache-hit path)")
    bench.add_argument("--profiler", choices=("pyinstrument", "cprofile"), default="pyinstrument",
                       help="with --profile: pyinstrument text reports or cProfile .pstats files")
    bench.add_argument("--measures", default="abcdefsw",
                       help="which of a-f, s (shadow overhead), w (swap pause) to run (a always runs: the "
                            "others compare against it)")
    bench.add_argument("--triton-url", default=None,
                       help="use this running Triton (e.g. the GPU one) instead of starting a CPU one")
    bench.add_argument("--triton-model", default="attribute_extractor", help="model name on Triton")
    bench.add_argument("--peers", choices=("also", "only"), default=None,
                       help="also (after the measures) or only: our worker vs the same job on Quix Streams, "
                            "Faust and Bytewax (devtools/bench/peers)")
    bench.add_argument("--no-perf-analyzer", action="store_true",
                       help="skip the perf_analyzer check (else fetched into ENRICH_CACHE_DIR on first use)")
    bench.add_argument("--distinct-titles", type=int, default=None,
                       help="size of the all-distinct cache-hit pass (default: as the repeated one, 100,000)")
    bench.add_argument("--max-workers", type=int, default=None,
                       help="scaling curve 1..N worker processes (default: the machine's cores)")
    bench.set_defaults(func=_bench)  # fmt: skip


def _bench(args: argparse.Namespace) -> int:
    from devtools.bench.run import BenchOptions, run_bench

    quick = bool(args.quick)
    options = BenchOptions(
        model=args.model,
        model_dir=args.model_dir.resolve() if args.model_dir else None,
        events=args.events or (2000 if quick else None),
        quick=quick,
        out=args.out.resolve(),
        profile=args.profile,
        profiler=args.profiler,
        triton_url=args.triton_url,
        triton_model=args.triton_model,
        raw_duration_s=1.5 if quick else 4.0,
        latency_duration_s=5.0 if quick else 20.0,
        measures=frozenset(args.measures) | {"a"},
        command=" ".join(["enrich", *sys.argv[1:]]),
        perf_analyzer=not args.no_perf_analyzer,
        distinct_titles=args.distinct_titles,
        **({"max_workers": args.max_workers} if args.max_workers else {}),
    )
    if args.peers != "only":
        run_bench(options)
    if args.peers is not None:
        from devtools.bench.peers.run import run_peers

        run_peers(options)
    return 0
