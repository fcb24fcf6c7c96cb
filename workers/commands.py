"""The runtime's subcommands of `enrich`: worker, tail, dlq, review, predict, replay and rollout (heavy
imports inside handlers)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_bootstrap_argument", "add_kafka_target", "check_kafka_target", "format_event", "register"]

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

    redrive_help = "re-publish dead letters to their input topic after a fix (see docs/lifecycle.md)"
    redrive = _operation(subparsers, ("dlq", "dead-letter operations"), "redrive", redrive_help,
                         ("ENRICH_DLQ_TOPIC", "listings.dlq"))  # fmt: skip
    redrive.add_argument("--reason", default=None, help="only dead letters with this error code")
    redrive.add_argument("--since", default=None, help="only those failed since: RFC 3339 time or 30m/2h/7d")
    redrive.add_argument("--dry-run", action="store_true", help="count what would be done; change nothing")
    redrive.add_argument("--max-attempts", type=int, default=3, help="skip records redriven this often")
    redrive.add_argument("--group", default=None, help="reader group (default enrich-redrive.<reason|all>)")
    redrive.add_argument("--to", default=None, help="publish here instead of the record's source topic")
    redrive.set_defaults(func=_redrive)

    export_help = "write the review topic as OA-Mine lines to correct (then `enrich train --extra-data`)"
    export = _operation(subparsers, ("review", "low-confidence review operations"), "export", export_help,
                        ("ENRICH_REVIEW_TOPIC", "listings.review"))  # fmt: skip
    export.add_argument("--out", required=True, help="OA-Mine JSON-lines file to write (replaced whole)")
    export.set_defaults(func=_review_export)

    rollout_parser = subparsers.add_parser(
        "rollout", help="hot swap: the model each consumer group runs (see docs/lifecycle.md)"
    )
    rollout = rollout_parser.add_subparsers(dest="rollout", required=True)
    set_parser = rollout.add_parser("set", help="set the desired model of a group; its workers switch to it")
    set_parser.add_argument("model", metavar="MODEL_DIR|DIGEST", help="exported model, or its digest (store)")
    status = rollout.add_parser("status", help="print the desired model, the candidate, what workers run")
    shadow = rollout.add_parser("shadow", help="run a candidate on a sample; its results to the shadow topic")
    canary = rollout.add_parser("canary", help="serve a share of listings (listing_id hash) by a candidate")
    promote = rollout.add_parser("promote", help="the candidate becomes the desired model (as `set`)")
    rollback = rollout.add_parser("rollback", help="drop the shadow or canary candidate")
    report = rollout.add_parser("report", help="compare a shadow candidate with the active model")
    for sub, flag, default in ((shadow, "--sample", 0.1), (canary, "--share", 0.05)):
        sub.add_argument("model", metavar="CANDIDATE", help="exported model dir, or its digest (store)")
        sub.add_argument(flag, dest="fraction", type=float, default=default,
                         help=f"fraction of listings, by listing_id hash (default {default})")  # fmt: skip
    shadow_default = os.environ.get("ENRICH_SHADOW_TOPIC", "listings.attributes.shadow")
    for sub in (shadow, report):  # shadow checks that it exists: topic auto-creation is off
        sub.add_argument("--shadow-topic", default=shadow_default, help="[env ENRICH_SHADOW_TOPIC]")
    report.add_argument("--examples", type=int, default=5, help="listings shown where the models differ")
    for sub in (set_parser, status, shadow, canary, promote, rollback, report):
        add_kafka_target(sub, "ENRICH_CONTROL_TOPIC", "enrich.control")
        default_group = os.environ.get("ENRICH_GROUP_ID", "listing-enrichment")
        group = None if sub in (status, report) else default_group
        sub.add_argument("--group", default=group, help="consumer group [env ENRICH_GROUP_ID]")
        sub.add_argument("--stale-after", type=float, default=120.0,
                         help="a worker that has not reported for this long (s) counts as gone")  # fmt: skip
        sub.set_defaults(func=_rollout)
    for sub in (set_parser, shadow, canary, promote):  # they resolve a model
        sub.add_argument("--store", default=os.environ.get("ENRICH_MODEL_STORE"),
                         help="model store folder, for a DIGEST [env ENRICH_MODEL_STORE]")  # fmt: skip
    for sub in (set_parser, shadow, canary, promote, rollback):  # they load or unload Triton versions
        sub.add_argument("--backend", default=os.environ.get("ENRICH_BACKEND", "onnx"),
                         choices=("onnx", "triton"), help="the group's backend [env ENRICH_BACKEND]")
        sub.add_argument("--triton-url", default=os.environ.get("ENRICH_TRITON_URL", "127.0.0.1:8001"))
        sub.add_argument("--triton-model",
                         default=os.environ.get("ENRICH_TRITON_MODEL", "attribute_extractor"))  # fmt: skip
        sub.add_argument("--triton-repo", default=os.environ.get("ENRICH_TRITON_REPO"),
                         help="the model repository Triton serves [env ENRICH_TRITON_REPO]")  # fmt: skip
    for sub in (set_parser, promote):
        sub.add_argument("--wait", type=float, default=120.0,
                         help="wait this long for every worker to switch (0: don't), then unload old "
                         "Triton versions")  # fmt: skip
    rollback.add_argument("--wait", type=float, default=120.0,
                          help="Triton: wait this long for every worker to drop the trial (0: don't), then "
                          "unload the candidate's version")  # fmt: skip


    from workers.runtime.replay import register as register_replay

    register_replay(subparsers)


    predict = subparsers.add_parser(
        "predict",
        help="offline batch prediction of a JSON-lines titles file (the worker's results, no Kafka)",
        description="One JSON per line with 'input' or 'title' (optional 'category', 'id'); writes one line "
        "per input line: category, attributes with confidence, offsets and normalised values.",
    )
    predict.add_argument("model_dir", help="exported model directory (model.onnx, labels.json, tokenizer)")
    predict.add_argument("input", help="input JSON-lines file")
    predict.add_argument("output", help="output JSON-lines file")
    predict.add_argument("--batch-size", type=int, default=64, help="titles per inference call (default: 64)")
    predict.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: 2)")
    predict.set_defaults(func=_predict)



def _operation(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], group: tuple[str, str], name: str,
    help_text: str, topic: tuple[str, str],
) -> argparse.ArgumentParser:  # fmt: skip
    """`enrich <group> <name>`, reading `--topic` (`topic`: its env var and default) from the broker."""
    group_name, group_help = group
    members = subparsers.add_parser(group_name, help=group_help)
    operation = members.add_subparsers(dest=group_name, required=True).add_parser(name, help=help_text)
    add_kafka_target(operation, *topic)
    return operation


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: still works, says which one to use instead."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        print(f"{parser.prog}: {option_string} is deprecated, use --kafka-bootstrap", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_bootstrap_argument(parser: argparse.ArgumentParser, *, deprecated: str | None = None) -> None:
    """`--kafka-bootstrap` (env ENRICH_KAFKA_BOOTSTRAP), the one spelling every command uses; `deprecated`
    names an old flag kept as a hidden alias. Also `--startup-timeout-s`, the bounded wait at start, and
    `--kafka-property` (security: see workers/runtime/kafka_security.py)."""
    from workers.runtime.kafka_security import add_kafka_property_argument

    add_kafka_property_argument(parser)
    parser.add_argument(
        "--kafka-bootstrap",
        default=os.environ.get("ENRICH_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="bootstrap servers [env ENRICH_KAFKA_BOOTSTRAP]",
    )
    if deprecated is not None:
        parser.add_argument(deprecated, dest="kafka_bootstrap", action=_DeprecatedAlias,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument(
        "--startup-timeout-s",
        type=float,
        default=float(os.environ.get("ENRICH_STARTUP_TIMEOUT_S", "10")),
        help="wait this long for the broker at start, then exit 4 [env ENRICH_STARTUP_TIMEOUT_S, default 10]",
    )


def add_kafka_target(parser: argparse.ArgumentParser, topic_env: str, default_topic: str) -> None:
    add_bootstrap_argument(parser)
    parser.add_argument(
        "--topic", default=os.environ.get(topic_env, default_topic), help=f"topic [env {topic_env}]"
    )
    parser.set_defaults(topic_env=topic_env)


def check_kafka_target(args: argparse.Namespace, topics: dict[str, str] | None = None) -> dict[str, int]:
    """Start-up check of a command's broker and topics (default: `--topic`); partitions per topic. Raises
    ServiceUnreachable / TopicMissing (exit codes 4 / 5) instead of waiting forever on a wrong broker."""
    from workers.runtime.broker import check_kafka
    from workers.runtime.kafka_security import client_config, prepare_cli_kafka

    if topics is None:
        topics = {args.topic: f"--topic / {args.topic_env}"}
    prepare_cli_kafka(args.kafka_bootstrap, args.kafka_property)  # a refused login or CA: exit 3 at once
    settings = client_config(args.kafka_bootstrap, {})
    return check_kafka(settings, topics, timeout_s=args.startup_timeout_s)


def _worker(args: argparse.Namespace) -> int:
    from workers.runtime.assembly import check_model_dir, serve
    from workers.runtime.config import load_config
    from workers.runtime.logs import configure_json_logging

    config = load_config(args)  # errors: `enrich` prints them with their exit code (workers.cli)
    check_model_dir(config)
    configure_json_logging(config.log_level, static_fields={"worker_id": config.worker_id})
    return serve(config)


def _redrive(args: argparse.Namespace) -> int:
    import orjson

    from workers.redrive import RedriveOptions, parse_since, redrive

    check_kafka_target(args)  # also applies --kafka-property (security) before any client is built
    options = RedriveOptions(
        args.kafka_bootstrap, args.topic, args.reason, parse_since(args.since) if args.since else None,
        args.dry_run, args.max_attempts, args.group, args.to,
    )  # fmt: skip
    counts = redrive(options)  # errors: `enrich` prints them with their exit code (workers.cli)
    print(("dry run, nothing changed: " if args.dry_run else "") + orjson.dumps(counts.as_dict()).decode())
    return 0


def _review_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    import orjson

    from workers.review_export import export_review

    check_kafka_target(args)
    counts = export_review(args.kafka_bootstrap, args.topic, Path(args.out))
    print(orjson.dumps(counts.as_dict()).decode() + f" -> {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workers.predict import predict_file

    paths = Path(args.model_dir), Path(args.input), Path(args.output)
    report = predict_file(*paths, batch_size=args.batch_size, threads=args.threads)
    print(
        f"predicted {report.titles} titles ({report.errors} lines without a title) in "
        f"{report.seconds:.1f} s: {report.titles_per_s:,.0f} titles/s -> {args.output}"
    )
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workers.rollout import RolloutTarget, run_cli
    from workers.rollout_trial import promote, report_lines, rollback, set_candidate

    topics = {args.topic: f"--topic / {args.topic_env}"}
    if args.rollout in ("shadow", "report"):  # auto-creation is off: workers would fail every shadow record
        topics[args.shadow_topic] = "--shadow-topic / ENRICH_SHADOW_TOPIC"
    check_kafka_target(args, topics)  # the topics exist; also applies --kafka-property (security)
    resolves = hasattr(args, "store")  # set, shadow, canary, promote
    triton = getattr(args, "backend", "onnx") == "triton"  # those and rollback
    target = RolloutTarget(
        args.kafka_bootstrap, args.topic, args.group or "",
        store=Path(args.store) if resolves and args.store else None,
        triton_url=args.triton_url if triton else "", triton_model=getattr(args, "triton_model", ""),
        triton_repo=Path(args.triton_repo) if triton and args.triton_repo else None,
    )  # fmt: skip
    action = args.rollout
    if action in ("set", "status"):
        model, wait = getattr(args, "model", None), getattr(args, "wait", 0.0)
        lines = run_cli(action, target, model, wait, args.stale_after)
    elif action in ("shadow", "canary"):
        lines = set_candidate(target, action, args.model, args.fraction, args.stale_after)
    elif action == "promote":
        lines = promote(target, wait_s=args.wait, stale_s=args.stale_after)
    elif action == "rollback":
        lines = rollback(target, wait_s=args.wait, stale_s=args.stale_after)
    else:
        lines = report_lines(args.kafka_bootstrap, args.shadow_topic, args.group, args.examples)
    print("\n".join(lines))
    return 0


def _tail(args: argparse.Namespace) -> int:
    import time

    import orjson
    from confluent_kafka import Consumer

    from workers.runtime.kafka_security import client_config

    check_kafka_target(args)
    consumer = Consumer(client_config(args.kafka_bootstrap, {
        "group.id": f"enrich-tail-{os.getpid()}", "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
    }))  # fmt: skip
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
