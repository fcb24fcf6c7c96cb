"""The runtime's subcommands of `enrich`: worker, tail and replay (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_kafka_target", "format_event", "register"]

_ENV_HELP = "Every setting also reads an ENRICH_* environment variable (flags win); see the groups below."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from workers.runtime.config import add_config_arguments

    worker = subparsers.add_parser(
        "worker",
        help="run a stream worker (scale out: more processes with the same group id)",
        description="Consume listings, extract attributes, produce attribute events. " + _ENV_HELP,
    )
    add_config_arguments(worker)
    worker.set_defaults(func=_worker)

    tail = subparsers.add_parser("tail", help="print attribute events (or DLQ records) readably")
    add_kafka_target(tail, "ENRICH_OUTPUT_TOPIC", "listings.attributes")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    tail.add_argument("--max", type=int, default=None, help="stop after this many events")
    tail.add_argument("--timeout", type=float, default=3600.0, help="stop after this many seconds")
    tail.add_argument("--json", action="store_true", help="print the raw JSON events")
    tail.set_defaults(func=_tail)

    from workers.runtime.replay import register as register_replay

    register_replay(subparsers)


def add_kafka_target(parser: argparse.ArgumentParser, topic_env: str, default_topic: str) -> None:
    parser.add_argument(
        "--kafka-bootstrap",
        default=os.environ.get("ENRICH_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="bootstrap servers [env ENRICH_KAFKA_BOOTSTRAP]",
    )
    parser.add_argument(
        "--topic", default=os.environ.get(topic_env, default_topic), help=f"topic [env {topic_env}]"
    )


def _worker(args: argparse.Namespace) -> int:
    from workers.contract.errors import EnrichError
    from workers.runtime.assembly import check_model_dir, serve
    from workers.runtime.config import load_config
    from workers.runtime.logs import configure_json_logging

    try:
        config = load_config(args)
        check_model_dir(config)
        configure_json_logging(config.log_level, static_fields={"worker_id": config.worker_id})
        return serve(config)
    except EnrichError as exc:
        print(f"enrich worker: {exc}", file=sys.stderr)
        return 2


def _tail(args: argparse.Namespace) -> int:
    import time

    import orjson
    from confluent_kafka import Consumer

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


def format_event(event: dict[str, Any], width: int = 58) -> str:
    """One readable line: listing, version, category (confidence), attribute=value pairs."""
    if "error" in event and "source" in event:
        error, key = event["error"], event["source"].get("key")
        return f"DLQ  {error['code']:<28} {key!s:<14} {error['message'][:60]}"
    category = f"{event['category']['label']} ({event['category']['confidence']:.2f})"
    attributes = "; ".join(f"{a['name']}={a['value']}" for a in event["attributes"]) or "-"
    cached = "cache" if event.get("cache_hit") else "model"
    head = f"{event['listing_id']:<10} v{event['listing_version']:<3} {category:<18} {cached:<5}"
    return f"{head}  {attributes[: width * 2]}"
