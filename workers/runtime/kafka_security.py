"""Every Kafka client's properties, from one function: the code's own settings plus the operator's.

The operator gives any librdkafka property (security above all: SASL_SSL, SCRAM, OAUTHBEARER, mTLS, a
private CA) in three ways, later ones winning:

1. `ENRICH_KAFKA_PROPERTIES_FILE`: a java-properties style file, `key=value` per line (`#` comments), the
   form Confluent Cloud, MSK and Strimzi hand out;
2. `ENRICH_KAFKA__<PROPERTY>` variables: the property upper-cased with `.` as `_`
   (`ENRICH_KAFKA__SASL_MECHANISM` -> `sasl.mechanism`);
3. `--kafka-property key=value` (repeatable) on every command that talks to Kafka.

A secret never has to sit in a ConfigMap or a command line: `<property>_FILE` (in any of the three forms,
e.g. `ENRICH_KAFKA__SASL_PASSWORD_FILE=/run/secrets/kafka`) reads the value from that file. Values of
secret properties are masked (`redact`) wherever a configuration is printed or logged.

Authentication and TLS failures are configuration errors: librdkafka reports them through its error
callback (`_AUTHENTICATION`, `_SSL`) and then retries forever, so `check_kafka_security` connects once at
start and raises `KafkaSecurityError` naming the setting instead.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workers.contract.errors import ConfigError, KafkaSecurityError

__all__ = [
    "PROPERTIES_FILE_ENV",
    "PROPERTY_ENV_PREFIX",
    "add_kafka_property_argument",
    "check_kafka_security",
    "client_config",
    "export_cli_properties",
    "kafka_properties",
    "parse_properties",
    "redact",
]

PROPERTIES_FILE_ENV = "ENRICH_KAFKA_PROPERTIES_FILE"
PROPERTY_ENV_PREFIX = "ENRICH_KAFKA__"
_FILE_SUFFIX = "_file"
# librdkafka property names that keep an underscore (the env form cannot tell `_` from `.` otherwise).
_UNDERSCORE_NAMES = {"log.level": "log_level"}
# What the worker's delivery guarantees rest on: the code sets them, an operator's value would break them.
_OWNED = frozenset({
    "bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store", "isolation.level",
    "enable.idempotence", "transactional.id", "acks",
})  # fmt: skip
_SECRET_WORDS = ("password", "secret", "jaas", "sasl.oauthbearer.config", "ssl.key.pem", "ssl_key")
MASK = "*****"


def property_of_env(name: str) -> str:
    """`ENRICH_KAFKA__SASL_MECHANISM` -> `sasl.mechanism`."""
    prop = name.removeprefix(PROPERTY_ENV_PREFIX).lower().replace("_", ".")
    return _UNDERSCORE_NAMES.get(prop, prop)


def env_of_property(prop: str) -> str:
    """`sasl.mechanism` -> `ENRICH_KAFKA__SASL_MECHANISM`."""
    return PROPERTY_ENV_PREFIX + prop.upper().replace(".", "_")


def parse_properties(text: str, source: str) -> dict[str, str]:
    """`key=value` (or `key: value`) lines; blank lines and `#`/`!` comments skipped."""
    properties: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if cut < 0:
            # The line is not shown: it may hold a secret.
            raise ConfigError(f"{source}, line {number}: expected key=value")
        properties[line[:cut].strip()] = line[cut + 1 :].strip()
    return properties


def _read_secret(path_text: str, where: str) -> str:
    try:
        return Path(path_text).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the secret file {path_text!r}: {exc.strerror}") from None


def kafka_properties(env: Mapping[str, str] | None = None, cli: Sequence[str] = ()) -> dict[str, str]:
    """The operator's librdkafka properties: the properties file, then `ENRICH_KAFKA__*`, then `cli`
    (`key=value` strings), each `<property>_FILE` replaced by the content of the file it names."""
    environ = os.environ if env is None else env
    given: list[tuple[str, str, str]] = []  # (property, value, where it was given)
    if path := environ.get(PROPERTIES_FILE_ENV, "").strip():
        try:
            text = Path(path).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(f"{PROPERTIES_FILE_ENV}: cannot read {path!r}: {exc.strerror}") from None
        from_file = parse_properties(text, path)
        given += [(k, v, f"{k} in {PROPERTIES_FILE_ENV} {path}") for k, v in from_file.items()]
    for name in sorted(environ):
        if name.startswith(PROPERTY_ENV_PREFIX):
            stem = name[: -len(_FILE_SUFFIX)] if name.lower().endswith(_FILE_SUFFIX) else name
            suffix = name[len(stem) :].lower()
            given.append((property_of_env(stem) + suffix, environ[name], name))
    for item in cli:
        key, value = _split_flag(item)
        given.append((key, value, f"--kafka-property {key}"))
    properties: dict[str, str] = {}
    for key, value, where in given:
        if key.lower().endswith(_FILE_SUFFIX):
            key, value = key[: -len(_FILE_SUFFIX)], _read_secret(value, where)
        if key in _OWNED:
            hint = " (use ENRICH_KAFKA_BOOTSTRAP / --kafka-bootstrap)" if key == "bootstrap.servers" else ""
            raise ConfigError(f"{where}: {key} is set by the worker itself and cannot be overridden{hint}")
        properties[key] = value
    return properties


def client_config(
    bootstrap: str, settings: Mapping[str, Any], properties: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The one place a Kafka client's configuration is built: `bootstrap`, the code's `settings`, then the
    operator's `properties` (default: `kafka_properties()` of this process's environment) on top."""
    extra = kafka_properties() if properties is None else properties
    return {**settings, **extra, "bootstrap.servers": bootstrap}


def is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with every secret value masked, for logs, dumps and settings tables."""
    return {k: (MASK if is_secret(k) and v not in (None, "") else v) for k, v in config.items()}


# ---- the command line -------------------------------------------------------------------------------------


def add_kafka_property_argument(parser: argparse.ArgumentParser | Any) -> None:
    """`--kafka-property key=value`, repeatable (a parser or an argument group)."""
    parser.add_argument(
        "--kafka-property", action="append", default=None, metavar="KEY=VALUE", dest="kafka_property",
        help=f"any librdkafka property, repeatable; also {PROPERTIES_FILE_ENV} and "
        f"{PROPERTY_ENV_PREFIX}<PROP> variables; <prop>_FILE=path reads a secret from a file",
    )  # fmt: skip


def export_cli_properties(values: Sequence[str] | None) -> None:
    """Put `--kafka-property` values into this process's environment (as `ENRICH_KAFKA__*`), so every
    client it builds, and every worker process it starts, gets them."""
    for item in values or ():
        key, value = _split_flag(item)
        suffix = key[-len(_FILE_SUFFIX) :] if key.lower().endswith(_FILE_SUFFIX) else ""
        os.environ[env_of_property(key[: len(key) - len(suffix)]) + suffix.upper()] = value


def _split_flag(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--kafka-property: expected key=value")  # not shown: it may hold a secret
    return key.strip(), value.strip()


# ---- failing fast on a refused credential or certificate --------------------------------------------------

_SASL_SETTINGS = "sasl.username / sasl.password (or sasl.mechanism, sasl.oauthbearer.*)"
_TLS_SETTINGS = (
    "ssl.ca.location (the CA that signed the broker's certificate; or ssl.certificate.location / "
    "ssl.key.location for client certificates)"
)


def security_error(code: int, reason: str) -> KafkaSecurityError | None:
    """The configuration error behind a librdkafka error callback, or None when it is not one."""
    from confluent_kafka import KafkaError

    if code == KafkaError._AUTHENTICATION or "SASL authentication" in reason:
        return KafkaSecurityError(f"Kafka refused the credentials: {reason}. Check {_SASL_SETTINGS}.")
    if code == KafkaError._SSL or "SSL handshake failed" in reason:
        return KafkaSecurityError(f"TLS with the Kafka broker failed: {reason}. Check {_TLS_SETTINGS}.")
    return None


def check_kafka_security(
    bootstrap: str, properties: Mapping[str, str] | None = None, timeout_s: float = 10.0
) -> bool:
    """Connect once with the operator's `properties`; raise KafkaSecurityError when the broker refuses the
    credentials or the TLS handshake fails (librdkafka reports either within a second and would then retry
    for ever). True when metadata came back, False when no broker answered within `timeout_s`: not a
    security problem, so the caller's usual waiting applies."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    failure: list[KafkaSecurityError] = []

    def on_error(err: Any) -> None:
        if not failure and (found := security_error(err.code(), err.str())) is not None:
            failure.append(found)

    config = client_config(bootstrap, {"client.id": "enrich-security-check"}, properties)
    admin = AdminClient({**config, "error_cb": on_error, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    answered = False
    while not failure and not answered and time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=0.5)
            answered = True
        except KafkaException:
            pass
        admin.poll(0.05)  # serves error_cb
    if failure:
        raise failure[0]
    return answered


def is_secured(properties: Mapping[str, str]) -> bool:
    """Whether the properties ask for SASL or TLS (only then can a credential or certificate be refused)."""
    protocol = properties.get("security.protocol", "plaintext").lower()
    return protocol != "plaintext" or any(k.startswith(("sasl.", "ssl.")) for k in properties)


def prepare_cli_kafka(bootstrap: str, cli_values: Sequence[str] | None, timeout_s: float = 10.0) -> None:
    """For a command that talks to Kafka: export its `--kafka-property` values, then, when they ask for
    SASL or TLS, fail at once (KafkaSecurityError) on a refused credential or certificate."""
    export_cli_properties(cli_values)
    properties = kafka_properties()
    if is_secured(properties):
        check_kafka_security(bootstrap, properties, timeout_s)
