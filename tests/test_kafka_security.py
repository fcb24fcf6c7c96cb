"""The operator's Kafka properties (file, ENRICH_KAFKA__*, --kafka-property, *_FILE secrets) and their
masking: pure logic, no broker (the secured broker is tests/test_security.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from workers.contract.errors import ConfigError
from workers.runtime.config import CacheConfig, add_config_arguments, load_config
from workers.runtime.kafka_security import (
    PROPERTIES_FILE_ENV,
    client_config,
    env_of_property,
    export_cli_properties,
    is_secured,
    kafka_properties,
    property_of_env,
    redact,
)
from workers.stages.cache import redis_security, safe_url


def test_env_names_map_to_librdkafka_properties_and_back() -> None:
    assert property_of_env("ENRICH_KAFKA__SASL_MECHANISM") == "sasl.mechanism"
    assert property_of_env("ENRICH_KAFKA__LOG_LEVEL") == "log_level"  # keeps its underscore
    assert env_of_property("ssl.ca.location") == "ENRICH_KAFKA__SSL_CA_LOCATION"


def test_file_then_env_then_cli_with_secrets_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("s3cret\n")
    props = tmp_path / "client.properties"
    props.write_text("# Confluent-style\nsecurity.protocol=SASL_SSL\nsasl.mechanism: PLAIN\n\n"
                     "sasl.username=from-file\n! other comment\nssl.ca.location=/ca.pem\n")
    env = {PROPERTIES_FILE_ENV: str(props), "ENRICH_KAFKA__SASL_USERNAME": "from-env",
           "ENRICH_KAFKA__SASL_PASSWORD_FILE": str(secret), "ENRICH_KAFKA_BOOTSTRAP": "not-a-property"}
    got = kafka_properties(env, cli=["ssl.ca.location=/other.pem", "client.rack = use1-az1"])
    assert got == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "from-env",
                   "sasl.password": "s3cret", "ssl.ca.location": "/other.pem", "client.rack": "use1-az1"}
    assert kafka_properties(env, cli=[f"sasl.password_FILE={secret}"])["sasl.password"] == "s3cret"


@pytest.mark.parametrize(("env", "cli", "named"), [
    ({"ENRICH_KAFKA__ENABLE_AUTO_COMMIT": "true"}, [], "ENRICH_KAFKA__ENABLE_AUTO_COMMIT"),
    ({}, ["bootstrap.servers=x:9092"], "ENRICH_KAFKA_BOOTSTRAP"),
    ({"ENRICH_KAFKA__SASL_PASSWORD_FILE": "/nonexistent/secret"}, [], "ENRICH_KAFKA__SASL_PASSWORD_FILE"),
    ({PROPERTIES_FILE_ENV: "/nonexistent.properties"}, [], PROPERTIES_FILE_ENV),
    ({}, ["no-equals-sign"], "--kafka-property"),
])  # fmt: skip
def test_bad_properties_are_config_errors_naming_the_setting(
    env: dict[str, str], cli: list[str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        kafka_properties(env, cli)


def test_client_config_puts_the_operator_properties_on_top_but_keeps_bootstrap() -> None:
    operator = {"linger.ms": "50", "sasl.username": "u"}
    config = client_config("b:9092", {"linger.ms": 5, "client.id": "w"}, operator)
    assert config == {"linger.ms": "50", "client.id": "w", "sasl.username": "u",
                      "bootstrap.servers": "b:9092"}


def test_secrets_are_masked() -> None:
    shown = redact({"sasl.password": "p", "ssl.key.password": "k", "sasl.oauthbearer.client.secret": "c",
                    "sasl.jaas.config": "j", "sasl.username": "u", "ssl.ca.location": "/ca"})
    assert shown == {"sasl.password": "*****", "ssl.key.password": "*****",
                     "sasl.oauthbearer.client.secret": "*****", "sasl.jaas.config": "*****",
                     "sasl.username": "u", "ssl.ca.location": "/ca"}
    assert safe_url("rediss://enrich:pw@127.0.0.1:6380/0") == "rediss://enrich:*****@127.0.0.1:6380/0"


def test_worker_flag_and_config_carry_the_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--kafka-property", "security.protocol=SSL",
                              "--kafka-property", "ssl.ca.location=/c"])
    config = load_config(args, env={"ENRICH_KAFKA__SASL_PASSWORD": "pw"})
    assert dict(config.kafka.properties) == {"security.protocol": "SSL", "ssl.ca.location": "/c",
                                             "sasl.password": "pw"}
    assert "pw" not in repr(config) and is_secured(config.kafka.properties)
    assert not is_secured({"client.rack": "a"})
    monkeypatch.delenv("ENRICH_KAFKA__SSL_CA_LOCATION", raising=False)
    export_cli_properties(["ssl.ca.location=/x"])
    try:
        assert os.environ["ENRICH_KAFKA__SSL_CA_LOCATION"] == "/x"
        assert kafka_properties()["ssl.ca.location"] == "/x"
    finally:
        del os.environ["ENRICH_KAFKA__SSL_CA_LOCATION"]


def test_redis_security_options(tmp_path: Path) -> None:
    password, ca = tmp_path / "pw", tmp_path / "ca.pem"
    password.write_text("redis-pw\n")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = CacheConfig(redis_url="rediss://r:6380/0", redis_username="enrich", redis_password_file=password,
                         redis_ca_file=ca)  # fmt: skip
    assert redis_security(config) == {"username": "enrich", "password": "redis-pw", "ssl_ca_certs": str(ca)}
    with pytest.raises(ConfigError, match="rediss://"):
        redis_security(CacheConfig(redis_url="redis://r:6379/0", redis_ca_file=ca))
    with pytest.raises(ConfigError, match="ENRICH_REDIS_PASSWORD_FILE"):
        redis_security(CacheConfig(redis_url="redis://r/0", redis_password_file=tmp_path / "missing"))


def test_keda_trigger_and_worker_read_kafka_credentials_from_one_secret() -> None:
    import yaml

    k8s = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
    docs = {(d["kind"], d["metadata"]["name"]): d
            for name in ("keda-scaledobject.yaml", "worker-statefulset.yaml")
            for d in yaml.safe_load_all((k8s / name).read_text()) if d}  # fmt: skip
    trigger = docs[("ScaledObject", "enrich-worker")]["spec"]["triggers"][0]
    auth = docs[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in auth} == {"sasl", "username", "password", "tls", "ca"}
    container = docs[("StatefulSet", "enrich-worker")]["spec"]["template"]["spec"]["containers"][0]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
               if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    assert {property_of_env(name) for name in secrets} == {"sasl.username", "sasl.password"}
    assert {ref["name"] for ref in auth} == {s["name"] for s in secrets.values()} == {"enrich-kafka"}


def test_views_translate_the_properties_for_faust(tmp_path: Path) -> None:
    import faust

    from devtools.services.secure import make_ca
    from views.credentials import broker_credentials

    ca = str(make_ca(tmp_path))
    assert broker_credentials({}) is None
    sasl = broker_credentials({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                               "sasl.username": "u", "sasl.password": "p", "ssl.ca.location": ca})
    assert isinstance(sasl, faust.SASLCredentials) and sasl.mechanism.value == "SCRAM-SHA-512"
    assert sasl.ssl_context is not None and sasl.protocol.value == "SASL_SSL"
    assert isinstance(broker_credentials({"security.protocol": "SSL", "ssl.ca.location": ca}),
                      faust.SSLCredentials)
    with pytest.raises(ConfigError, match="OAUTHBEARER"):
        broker_credentials({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"})


def test_every_kafka_client_of_the_runtime_is_built_through_client_config() -> None:
    """A client built from a bare dict speaks plaintext to a SASL_SSL listener: the hot-swap control reader
    did, found by `enrich demo --secure` (its worker's control consumer retried the handshake for ever)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "workers"
    # These two build an AdminClient from settings that already went through client_config.
    allowed = {"runtime/broker.py", "runtime/kafka_security.py"}
    builders = {"client_config", "consumer_settings", "producer_settings"}
    bare = []
    for path in sorted(root.rglob("*.py")):
        if str(path.relative_to(root)) in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("Consumer", "Producer", "AdminClient")):  # fmt: skip
                first = node.args[0] if node.args else None
                built = isinstance(first, ast.Call) and getattr(first.func, "id", "") in builders
                if not built:
                    bare.append(f"{path.relative_to(root)}:{node.lineno}")
    assert bare == []
