"""Worker subcommands of `enrich`: worker, produce-sample, tail, demo (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["register"]

_ENV_HELP = "Every setting also reads an ENRICH_* environment variable (flags win); see the groups below."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from workers.config import add_config_arguments

    worker = subparsers.add_parser(
        "worker",
        help="run a stream worker (scale out: more processes with the same group id)",
        description="Consume listings, extract attributes, produce attribute events. " + _ENV_HELP,
    )
    add_config_arguments(worker)
    worker.set_defaults(func=_worker)

    produce = subparsers.add_parser("produce-sample", help="produce sample listings (and invalid records)")
    _add_kafka_target(produce, "ENRICH_INPUT_TOPIC", "listings.new")
    produce.add_argument("--count", type=int, default=100, help="valid listings to produce (default 100)")
    produce.add_argument("--invalid", action="store_true", help="also produce one record per DLQ reason")
    produce.add_argument("--listing-version", type=int, default=1, help="listing_version of every listing")
    produce.add_argument("--seed", type=int, default=7, help="which fixture titles are picked")
    produce.set_defaults(func=_produce_sample)

    tail = subparsers.add_parser("tail", help="print attribute events (or DLQ records) readably")
    _add_kafka_target(tail, "ENRICH_OUTPUT_TOPIC", "listings.attributes")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    tail.add_argument("--max", type=int, default=None, help="stop after this many events")
    tail.add_argument("--timeout", type=float, default=3600.0, help="stop after this many seconds")
    tail.add_argument("--json", action="store_true", help="print the raw JSON events")
    tail.set_defaults(func=_tail)

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
    demo.set_defaults(func=_demo)


def _add_kafka_target(parser: argparse.ArgumentParser, topic_env: str, default_topic: str) -> None:
    parser.add_argument(
        "--kafka-bootstrap",
        default=os.environ.get("ENRICH_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="bootstrap servers [env ENRICH_KAFKA_BOOTSTRAP]",
    )
    parser.add_argument(
        "--topic", default=os.environ.get(topic_env, default_topic), help=f"topic [env {topic_env}]"
    )


def _worker(args: argparse.Namespace) -> int:
    from workers.config import load_config
    from workers.errors import EnrichError
    from workers.logs import configure_json_logging
    from workers.pipeline import check_model_dir, serve

    try:
        config = load_config(args)
        check_model_dir(config)
        configure_json_logging(config.log_level, static_fields={"worker_id": config.worker_id})
        return serve(config)
    except EnrichError as exc:
        print(f"enrich worker: {exc}", file=sys.stderr)
        return 2


def _produce_sample(args: argparse.Namespace) -> int:
    from workers.demo import invalid_samples, produce_records, sample_listings

    records: list[tuple[bytes | None, bytes | None]] = list(
        sample_listings(args.count, seed=args.seed, version=args.listing_version)
    )
    if args.invalid:
        records += invalid_samples()
    sent = produce_records(args.kafka_bootstrap, args.topic, records)
    print(f"produced {sent} records to {args.topic}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    import time

    import orjson
    from confluent_kafka import Consumer

    from workers.demo import format_event

    consumer = Consumer({
        "bootstrap.servers": args.kafka_bootstrap, "group.id": f"enrich-tail-{os.getpid()}",
        "enable.auto.commit": False, "isolation.level": "read_committed",
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
    })  # fmt: skip
    consumer.subscribe([args.topic])
    seen, deadline = 0, time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline and (args.max is None or seen < args.max):
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            seen += 1
            try:
                line = msg.value().decode() if args.json else format_event(orjson.loads(msg.value()))
            except (ValueError, KeyError, TypeError):
                line = f"(unreadable record at partition {msg.partition()} offset {msg.offset()})"
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from workers.demo import DemoOptions, run_demo

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run_demo(DemoOptions(count=args.count, backend=args.backend, base=args.base, rows=args.rows))
