"""Dev-tool subcommands of `enrich`: demo and produce-sample (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
import os

from workers.commands import add_kafka_target, check_kafka_target

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    produce = subparsers.add_parser("produce-sample", help="produce sample listings (and invalid records)")
    add_kafka_target(produce, "ENRICH_INPUT_TOPIC", "listings.new")
    produce.add_argument("--count", type=int, default=100, help="valid listings to produce (default 100)")
    produce.add_argument("--invalid", action="store_true", help="also produce one record per DLQ reason")
    produce.add_argument("--listing-version", type=int, default=1, help="listing_version of every listing")
    produce.add_argument("--seed", type=int, default=7, help="which fixture titles are picked")
    produce.set_defaults(func=_produce_sample)

    demo = subparsers.add_parser(
        "demo", help="services + model + sample listings + worker: a table of results, throughput, cache hits"
    )
    demo.add_argument("--count", type=int, default=200, help="sample listings (default 200)")
    demo.add_argument("--backend", choices=("onnx", "triton"), default="onnx", help="inference backend")
    demo.add_argument(
        "--base",
        default="minilm",
        help="model to find or train: minilm (default; all-MiniLM-L6-v2 fine-tuned on the fixture offers,"
        " a few minutes the first time), tiny (seconds) or a path",
    )
    demo.add_argument("--rows", type=int, default=15, help="table rows to print")
    demo.add_argument("--secure", action="store_true",
                      help="run it all over SASL_SSL Kafka (SCRAM) and TLS Redis with an ACL user")
    demo.set_defaults(func=_demo)


def _produce_sample(args: argparse.Namespace) -> int:
    from devtools.harness.listings import invalid_samples, sample_listings
    from devtools.harness.producer import produce_records
    check_kafka_target(args)  # a wrong broker or topic: exit 4 / 5 now, not after the delivery timeout
    records: list[tuple[bytes | None, bytes | None]] = list(
        sample_listings(args.count, seed=args.seed, version=args.listing_version)
    )
    if args.invalid:
        records += invalid_samples()
    sent = produce_records(args.kafka_bootstrap, args.topic, records)
    print(f"produced {sent} records to {args.topic}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from devtools.demo import DemoOptions, run_demo

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run_demo(DemoOptions(count=args.count, backend=args.backend, base=args.base, rows=args.rows,
                                secure=args.secure))
