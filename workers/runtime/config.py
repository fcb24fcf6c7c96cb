"""The worker's typed configuration, in one place: frozen dataclasses, one per component.

Every setting has an `ENRICH_*` environment variable and a command-line flag (flags win over env vars,
env vars over defaults). `enrich worker --help` lists them all with their defaults. Each stage is handed
only its own section (`config.kafka`, `config.batch`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.contract.errors import ConfigError
from workers.runtime.kafka_security import (
    PROPERTIES_FILE_ENV,
    PROPERTY_ENV_PREFIX,
    add_kafka_property_argument,
    kafka_properties,
)

__all__ = [
    "BackendConfig",
    "BatchConfig",
    "CacheConfig",
    "FlowConfig",
    "KafkaConfig",
    "MetricsConfig",
    "ReviewConfig",
    "WorkerConfig",
    "add_config_arguments",
    "load_config",
    "settings_table",
]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _parse_optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text.strip() else None


def setting(
    default: Any,
    env: str,
    help_text: str,
    parse: Callable[[str], Any] = str,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field with its env var, its help line and the parser for its text form."""
    return field(
        default=default, metadata={"env": env, "help": help_text, "parse": parse, "choices": choices}
    )


def path_setting(env: str, help_text: str) -> Any:
    """An optional path (a file or folder); unset by default."""
    return setting(None, env, help_text, _parse_optional_path)


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = setting("127.0.0.1:9092", "ENRICH_KAFKA_BOOTSTRAP", "Kafka bootstrap servers")
    group_id: str = setting(
        "listing-enrichment",
        "ENRICH_GROUP_ID",
        "consumer group id; run more processes with the same id to scale out",
    )
    input_topic: str = setting("listings.new", "ENRICH_INPUT_TOPIC", "topic of listing v1 events")
    output_topic: str = setting(
        "listings.attributes", "ENRICH_OUTPUT_TOPIC", "topic of listing-attributes v1 events"
    )
    dlq_topic: str = setting("listings.dlq", "ENRICH_DLQ_TOPIC", "dead-letter topic (dead-letter v1)")
    control_topic: str = setting(
        "enrich.control",
        "ENRICH_CONTROL_TOPIC",
        "compacted topic of desired models and worker reports (enrich rollout); empty: no hot swap",
    )
    control_report_s: float = setting(
        30.0, "ENRICH_CONTROL_REPORT_S", "how often a worker reports its model on the control topic", float
    )
    shadow_topic: str = setting(
        "listings.attributes.shadow", "ENRICH_SHADOW_TOPIC",
        "topic of shadow comparisons (enrich rollout shadow / report); never the output topic",
    )  # fmt: skip
    exactly_once: bool = setting(
        False,
        "ENRICH_EXACTLY_ONCE",
        "transactions + send_offsets_to_transaction instead of at-least-once",
        _parse_bool,
    )
    consume_max_messages: int = setting(
        2000, "ENRICH_CONSUME_MAX_MESSAGES", "messages per consume() call (one cache MGET each)", int
    )
    commit_interval_ms: int = setting(
        1000,
        "ENRICH_COMMIT_INTERVAL_MS",
        "how often finished offsets (or the transaction) are committed",
        int,
    )
    session_timeout_ms: int = setting(
        10000, "ENRICH_SESSION_TIMEOUT_MS", "consumer group session timeout", int
    )
    auto_offset_reset: str = setting(
        "earliest", "ENRICH_AUTO_OFFSET_RESET", "where a new group starts", choices=("earliest", "latest")
    )
    transaction_timeout_ms: int = setting(
        60000,
        "ENRICH_TRANSACTION_TIMEOUT_MS",
        "exactly-once: broker aborts a transaction left open this long",
        int,
    )
    drain_timeout_s: float = setting(
        30.0, "ENRICH_DRAIN_TIMEOUT_S", "on rebalance/SIGTERM, wait this long for in-flight batches", float
    )
    # The operator's librdkafka properties (security above all), from ENRICH_KAFKA_PROPERTIES_FILE,
    # ENRICH_KAFKA__* and --kafka-property: see runtime/kafka_security.py. Never in a repr (secrets).
    properties: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = setting(32, "ENRICH_MAX_BATCH", "listings per inference batch", int)
    max_wait_ms: int = setting(20, "ENRICH_MAX_WAIT_MS", "longest a listing waits for its batch to fill", int)
    max_in_flight: int = setting(4, "ENRICH_MAX_IN_FLIGHT", "inference batches in flight at once", int)
    max_pending: int = setting(
        4000, "ENRICH_MAX_PENDING", "consumed but unfinished listings before intake waits", int
    )


@dataclass(frozen=True)
class CacheConfig:
    redis_url: str = setting(
        "", "ENRICH_REDIS_URL", "redis://host:port/db for the result cache; empty: no cache"
    )
    redis_cluster: bool = setting(
        False,
        "ENRICH_REDIS_CLUSTER",
        "ENRICH_REDIS_URL is one node of a Redis Cluster (db 0; the other nodes are discovered)",
        _parse_bool,
    )
    ttl_s: int = setting(7 * 24 * 3600, "ENRICH_CACHE_TTL_S", "cache entry lifetime in seconds", int)
    redis_username: str = setting(
        "", "ENRICH_REDIS_USERNAME", "Redis ACL user (or user@ in the URL); empty: the default user"
    )
    redis_password_file: Path | None = path_setting(  # noqa: RUF009 (returns a dataclasses.field)
        "ENRICH_REDIS_PASSWORD_FILE",
        "file holding the Redis password (AUTH / ACL user), so it never sits in the URL or a ConfigMap",
    )
    redis_ca_file: Path | None = path_setting(  # noqa: RUF009 (returns a dataclasses.field)
        "ENRICH_REDIS_CA_FILE",
        "CA certificate(s) that signed the Redis server's TLS certificate (rediss:// URLs)",
    )


@dataclass(frozen=True)
class BackendConfig:
    kind: str = setting("onnx", "ENRICH_BACKEND", "inference backend", choices=("onnx", "triton"))
    model_dir: Path | None = path_setting(  # noqa: RUF009 (returns a dataclasses.field)
        "ENRICH_MODEL_DIR",
        "exported model directory (model.onnx, tokenizer.json, labels.json, ...)",
    )
    triton_url: str = setting("127.0.0.1:8001", "ENRICH_TRITON_URL", "Triton gRPC address host:port")
    triton_model: str = setting("attribute_extractor", "ENRICH_TRITON_MODEL", "model name on Triton")
    triton_version: str = setting(
        "", "ENRICH_TRITON_VERSION", "Triton model version to call; empty: the newest one Triton serves"
    )
    model_store: Path | None = path_setting(  # noqa: RUF009 (returns a dataclasses.field)
        "ENRICH_MODEL_STORE",
        "folder of exported models (named by digest, or any name with model_info.json) for hot swaps",
    )
    timeout_s: float = setting(10.0, "ENRICH_INFER_TIMEOUT_S", "per-request inference timeout", float)
    intra_op_threads: int = setting(
        1, "ENRICH_ORT_THREADS", "ONNX Runtime intra-op threads (onnx backend)", int
    )


@dataclass(frozen=True)
class FlowConfig:
    failure_threshold: int = setting(
        3, "ENRICH_BREAKER_FAILURES", "failures in a row that open the breaker", int
    )
    reset_after_s: float = setting(
        5.0, "ENRICH_BREAKER_RESET_S", "open breaker tries again after this", float
    )
    backoff_initial_s: float = setting(0.2, "ENRICH_BACKOFF_INITIAL_S", "first retry delay", float)
    backoff_max_s: float = setting(10.0, "ENRICH_BACKOFF_MAX_S", "longest retry delay", float)


@dataclass(frozen=True)
class MetricsConfig:
    port: int = setting(
        9108, "ENRICH_METRICS_PORT", "Prometheus /metrics, /healthz, /readyz port; -1: off", int
    )
    host: str = setting("0.0.0.0", "ENRICH_METRICS_HOST", "address the metrics endpoint binds")


@dataclass(frozen=True)
class ReviewConfig:
    topic: str = setting(
        "", "ENRICH_REVIEW_TOPIC", "topic for copies of low-confidence events to label; empty: no review"
    )
    # 0.5: below it the model puts more probability on other categories (tags) than on the one it names.
    category_min: float = setting(
        0.5, "ENRICH_REVIEW_CATEGORY_MIN", "review a listing whose category confidence is below this", float
    )
    attribute_min: float = setting(
        0.5, "ENRICH_REVIEW_ATTRIBUTE_MIN", "review a listing with an attribute confidence below this", float
    )
    thresholds_file: Path | None = path_setting(  # noqa: RUF009 (returns a dataclasses.field)
        "ENRICH_REVIEW_THRESHOLDS_FILE",
        "JSON: per-category and per-attribute thresholds over the two above (docs/lifecycle.md)",
    )


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    worker_id: str = setting(
        "", "ENRICH_WORKER_ID", "stable worker name (logs, DLQ, transactional.id); empty: host-pid"
    )
    log_level: str = setting(
        "INFO", "ENRICH_LOG_LEVEL", "log level (any case)", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    startup_timeout_s: float = setting(
        60.0,
        "ENRICH_STARTUP_TIMEOUT_S",
        "at start, wait this long for Kafka (and Triton) to answer, then exit 4; once running, never exit",
        float,
    )

    def __post_init__(self) -> None:
        if not self.worker_id:
            object.__setattr__(self, "worker_id", _default_worker_id())
        _check_positive(self.batch.max_batch, "ENRICH_MAX_BATCH")
        _check_positive(self.batch.max_in_flight, "ENRICH_MAX_IN_FLIGHT")
        _check_positive(self.batch.max_pending, "ENRICH_MAX_PENDING")
        _check_positive(self.kafka.consume_max_messages, "ENRICH_CONSUME_MAX_MESSAGES")
        _check_positive(self.kafka.commit_interval_ms, "ENRICH_COMMIT_INTERVAL_MS")
        if self.batch.max_wait_ms < 0:
            raise ConfigError("ENRICH_MAX_WAIT_MS / --max-wait-ms must be >= 0")
        if self.startup_timeout_s <= 0:
            raise ConfigError(f"ENRICH_STARTUP_TIMEOUT_S / --startup-timeout-s must be > 0, got "
                              f"{self.startup_timeout_s}")


def _check_positive(value: int, env: str) -> None:
    if value <= 0:
        raise ConfigError(f"{env} / --{_flag_of(env)} must be > 0, got {value}")


_SECTIONS: dict[str, type] = {
    "kafka": KafkaConfig,
    "batch": BatchConfig,
    "cache": CacheConfig,
    "backend": BackendConfig,
    "flow": FlowConfig,
    "metrics": MetricsConfig,
    "review": ReviewConfig,
}


def _flag_of(env: str) -> str:
    return env.removeprefix("ENRICH_").lower().replace("_", "-")


def _dest_of(env: str) -> str:
    return "cfg_" + env.removeprefix("ENRICH_").lower()


def _fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "env" in f.metadata]


def _choice(text: str, choices: tuple[str, ...]) -> str | None:
    """The choice `text` names, in any case (`info` is `INFO`); None if none."""
    return {c.lower(): c for c in choices}.get(text.strip().lower())


def _choice_type(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        choice = _choice(text, choices)
        if choice is None:  # argparse turns this into a usage error (exit 2) naming the flag
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(choices)})")
        return choice

    return parse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (e.g. --kafka-bootstrap for ENRICH_KAFKA_BOOTSTRAP), grouped by section.

    A boolean setting is a flag pair (`--exactly-once` / `--no-exactly-once`); choices take any case.
    Unset flags stay None, so the env var (then the default) applies.
    """
    for title, cls in [("worker", WorkerConfig), *_SECTIONS.items()]:
        group = parser.add_argument_group(f"{title} settings")
        if cls is KafkaConfig:
            add_kafka_property_argument(group)
        for f in _fields(cls):
            env = f.metadata["env"]
            default = f.default if f.default is not dataclasses.MISSING else None
            options: dict[str, Any] = {"metavar": env.removeprefix("ENRICH_")}
            if f.metadata["parse"] is _parse_bool:
                options = {"action": argparse.BooleanOptionalAction}
            elif f.metadata["choices"]:
                options = {"metavar": "{" + ",".join(f.metadata["choices"]) + "}",
                           "type": _choice_type(f.metadata["choices"])}  # fmt: skip
            group.add_argument(
                f"--{_flag_of(env)}",
                dest=_dest_of(env),
                default=None,
                help=f"{f.metadata['help']} [env {env}, default {default!r}]",
                **options,
            )


def _value(f: dataclasses.Field[Any], args: argparse.Namespace | None, env: Mapping[str, str]) -> Any:
    name = f.metadata["env"]
    text = getattr(args, _dest_of(name), None) if args is not None else None
    if isinstance(text, bool):  # a flag pair (--exactly-once / --no-exactly-once) already parsed
        return text
    if text is None:
        text = env.get(name)
    if text is None:
        return dataclasses.MISSING
    choices = f.metadata["choices"]
    if choices:
        choice = _choice(text, choices)
        if choice is None:
            raise ConfigError(
                f"{name} / --{_flag_of(name)} must be one of {', '.join(choices)}, got {text!r}"
            )
        text = choice
    try:
        return f.metadata["parse"](text)
    except ValueError as exc:
        raise ConfigError(f"{name} / --{_flag_of(name)}: cannot read {text!r}: {exc}") from None


def _build(cls: type, args: argparse.Namespace | None, env: Mapping[str, str], **extra: Any) -> Any:
    values = {f.name: v for f in _fields(cls) if (v := _value(f, args, env)) is not dataclasses.MISSING}
    return cls(**values, **extra)


def load_config(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> WorkerConfig:
    """Flags (`add_config_arguments`) over `ENRICH_*` env vars over defaults; `overrides` replace sections."""
    environ = os.environ if env is None else env
    cli_properties = getattr(args, "kafka_property", None) or ()
    extra: dict[str, dict[str, Any]] = {"kafka": {"properties": kafka_properties(environ, cli_properties)}}
    sections = {name: _build(cls, args, environ, **extra.get(name, {})) for name, cls in _SECTIONS.items()}
    sections.update(overrides)
    return _build(WorkerConfig, args, environ, **sections)


def settings_table() -> str:
    """A Markdown table of every setting (env var, flag, default, meaning), for the README."""
    rows = ["| env var | flag | default | meaning |", "|---|---|---|---|"]
    for cls in (WorkerConfig, *_SECTIONS.values()):
        for f in _fields(cls):
            env = f.metadata["env"]
            default = f.default if f.default is not dataclasses.MISSING else None
            rows.append(f"| `{env}` | `--{_flag_of(env)}` | `{default!r}` | {f.metadata['help']} |")
    rows.append(f"| `{PROPERTIES_FILE_ENV}`, `{PROPERTY_ENV_PREFIX}<PROP>`, `<PROP>_FILE` | "
                "`--kafka-property k=v` | | any librdkafka property (security); see docs/operations.md |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
