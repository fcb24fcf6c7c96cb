"""`enrich views`: run the recommender-facing Faust views as a worker (foreground; Ctrl-C / SIGTERM stop)."""

from __future__ import annotations

import argparse
from pathlib import Path

from workers.commands import add_bootstrap_argument, check_kafka_target

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "views", help="latest attributes per listing (compacted topic) and listings per category (Faust)")
    add_bootstrap_argument(parser, deprecated="--broker")  # --kafka-bootstrap, like every command
    parser.add_argument("--app-id", default="enrich-views", help="Faust app id (group, topic prefix)")
    parser.add_argument("--input-topic", default="listings.attributes")
    parser.add_argument("--latest-topic", default="listings.latest", help="compacted output topic")
    parser.add_argument("--partitions", type=int, default=None,
                        help="the input topic's partitions (default: read from the topic)")
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--processing-guarantee", choices=("at_least_once", "exactly_once"),
                        default="at_least_once",
                        help="exactly_once: tables, outputs and offsets in Kafka transactions")
    parser.add_argument("--data-dir", type=Path, default=Path(".cache/views"))
    parser.add_argument("--log-level", default="info", type=str.lower, help="any case")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import faust  # heavy: only when the command runs

    from views.app import TABLES, make_app
    from views.topics import declare_topics, views_topics
    from workers.contract.errors import ConfigError
    from workers.runtime.kafka_security import kafka_properties

    # Fail fast on a wrong broker or input topic (exit 4 / 5), and learn its partitions.
    found = check_kafka_target(args, {args.input_topic: "--input-topic"})[args.input_topic]
    if args.partitions is not None and args.partitions != found:
        raise ConfigError(f"--partitions {args.partitions} but topic {args.input_topic!r} has {found}: the "
                          "views' tables must be partitioned like their input (leave --partitions out)")
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    topics = views_topics(args.app_id, args.latest_topic, TABLES)
    declare_topics(args.kafka_bootstrap, kafka_properties(), topics, found, args.replication_factor)
    views = make_app(args.kafka_bootstrap, app_id=args.app_id, input_topic=args.input_topic,
                     latest_topic=args.latest_topic, data_dir=data_dir, partitions=found,
                     replication_factor=args.replication_factor,
                     processing_guarantee=args.processing_guarantee,
                     kafka_properties=kafka_properties())  # check_kafka_target exported --kafka-property
    worker = faust.Worker(views.app, loglevel=args.log_level)
    worker.execute_from_commandline()  # returns by SystemExit when the worker stops
    return 0
