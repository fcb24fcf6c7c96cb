"""Kafka over SASL_SSL (SCRAM-SHA-512) and Redis over TLS with an ACL user, on real local services: the
worker, `produce-sample` and `tail` work over them, and a wrong password or an untrusted CA stops each at
once with an error naming the setting and exit code 3 (configuration). One secured broker and Redis for
the module."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from devtools.harness.listings import sample_listings
from devtools.harness.producer import produce_records
from devtools.harness.reader import read_events
from devtools.services.kafka import KafkaCluster
from devtools.services.redis_server import RedisServer
from devtools.services.secure import StackSecurity, make_ca
from workers.cli import main
from workers.contract.errors import ConfigError, ExitCode, KafkaSecurityError
from workers.runtime.assembly import run_worker
from workers.runtime.config import CacheConfig, load_config
from workers.runtime.kafka_security import PROPERTIES_FILE_ENV, PROPERTY_ENV_PREFIX
from workers.stages.cache import make_redis_client, redis_security

pytestmark = pytest.mark.services


@dataclass
class Secured:
    security: StackSecurity
    kafka: KafkaCluster
    redis: RedisServer
    other_ca: Path  # a CA that signed nothing here: "untrusted"

    def topic(self, partitions: int = 1) -> str:
        name = f"sec-{uuid.uuid4().hex[:10]}"
        self.kafka.create_topic(name, partitions=partitions)
        return name


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    base = tmp_path_factory.mktemp("secured")
    security = StackSecurity.create(base / "security")
    other_ca = make_ca(base / "other-ca", "someone-else")
    with KafkaCluster(base / "kafka", security=security) as kafka, \
            RedisServer(base / "redis", security=security) as server:  # fmt: skip
        yield Secured(security, kafka, server, other_ca)


@pytest.fixture
def client_env(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's Kafka clients use the stack's client properties (user `enrich`); `--kafka-property`
    values exported by a command are removed again afterwards."""
    before = {k for k in os.environ if k.startswith(PROPERTY_ENV_PREFIX)}
    monkeypatch.setenv(PROPERTIES_FILE_ENV, str(secured.security.client_properties_path))
    yield {PROPERTIES_FILE_ENV: str(secured.security.client_properties_path)}
    for key in [k for k in os.environ if k.startswith(PROPERTY_ENV_PREFIX) and k not in before]:
        del os.environ[key]


def test_plaintext_client_cannot_use_the_secured_broker(secured: Secured) -> None:
    """The listener really is SASL_SSL: without the properties there is no metadata."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": secured.kafka.bootstrap_servers, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)


def test_worker_enriches_over_sasl_ssl_kafka_and_tls_redis(
    secured: Secured, client_env: dict[str, str], tiny_model_dir: Path
) -> None:
    source, output, dlq = secured.topic(partitions=2), secured.topic(), secured.topic()
    listings = sample_listings(20, id_prefix="S")
    produce_records(secured.kafka.bootstrap_servers, source, listings)
    env = {**client_env, **secured.security.redis_env(), "ENRICH_REDIS_URL": secured.redis.url,
           "ENRICH_KAFKA_BOOTSTRAP": secured.kafka.bootstrap_servers, "ENRICH_MODEL_DIR": str(tiny_model_dir),
           "ENRICH_INPUT_TOPIC": source, "ENRICH_OUTPUT_TOPIC": output, "ENRICH_DLQ_TOPIC": dlq,
           "ENRICH_GROUP_ID": f"g-{uuid.uuid4().hex}", "ENRICH_METRICS_PORT": "-1"}  # fmt: skip
    config = load_config(None, env=env)
    assert config.kafka.properties["sasl.username"] == "enrich"
    assert config.kafka.properties["sasl.password"] not in repr(config)  # a secret is never shown

    async def run() -> list[dict]:
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(config, stop))
        try:
            return await asyncio.to_thread(read_events, secured.kafka.bootstrap_servers, output,
                                           expected=len(listings), timeout_s=120)  # fmt: skip
        finally:
            stop.set()
            await task

    events = asyncio.run(run())
    assert sorted(e["listing_id"] for e in events) == sorted(k.decode() for k, _ in listings)
    # The results were cached in the TLS Redis as the ACL user.
    assert secured.redis.client().dbsize() > 0


def test_produce_sample_and_tail_over_sasl_ssl(
    secured: Secured, client_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic, bootstrap = secured.topic(), secured.kafka.bootstrap_servers
    assert main(["produce-sample", "--kafka-bootstrap", bootstrap, "--topic", topic, "--count", "3"]) == 0
    assert "produced 3 records" in capsys.readouterr().out
    assert main(["tail", "--kafka-bootstrap", bootstrap, "--topic", topic, "--from-beginning", "--max", "3",
                 "--timeout", "60", "--json"]) == 0  # fmt: skip
    assert len(capsys.readouterr().out.splitlines()) == 3


@pytest.mark.parametrize("command", ["worker", "tail", "produce-sample"])
@pytest.mark.parametrize(("prop", "wrong", "named"), [
    ("sasl.password", "not-the-password", "sasl.password"),
    ("ssl.ca.location", None, "ssl.ca.location"),
])  # fmt: skip
def test_wrong_password_or_untrusted_ca_stops_with_its_own_exit_code(
    secured: Secured, client_env: dict[str, str], tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
    command: str, prop: str, wrong: str | None, named: str,
) -> None:  # fmt: skip
    """No retry loop: librdkafka's error callback reports the refusal, the command stops on it."""
    value = wrong if wrong is not None else str(secured.other_ca)
    target = ["--kafka-bootstrap", secured.kafka.bootstrap_servers, "--kafka-property", f"{prop}={value}"]
    extra = {"worker": ["--model-dir", str(tiny_model_dir), "--metrics-port", "-1"],
             "tail": ["--topic", "nothing", "--timeout", "600"], "produce-sample": ["--topic", "nothing"]}
    assert main([command, *target, *extra[command]]) == KafkaSecurityError.exit_code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert f"enrich {command}:" in err and named in err
    assert value not in err or prop != "sasl.password"  # the wrong secret itself is never printed


def test_redis_wrong_password_or_untrusted_ca_is_a_config_error(secured: Secured, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("nope\n")
    base = CacheConfig(redis_url=secured.redis.url, redis_username="enrich",
                       redis_password_file=secured.security.password_path("redis"),
                       redis_ca_file=secured.security.ca_path)  # fmt: skip
    for config, named in [
        (CacheConfig(**{**base.__dict__, "redis_password_file": wrong}), "ENRICH_REDIS_PASSWORD_FILE"),
        (CacheConfig(**{**base.__dict__, "redis_ca_file": secured.other_ca}), "ENRICH_REDIS_CA_FILE"),
    ]:
        with pytest.raises(ConfigError, match=named):
            make_redis_client(config.redis_url, security=redis_security(config))
    plain = redis.Redis(host="127.0.0.1", port=secured.redis.port, socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(redis.exceptions.ConnectionError):  # TLS only: no plaintext port
        plain.ping()


def test_views_credentials_reach_the_secured_broker(secured: Secured) -> None:
    """The views' translation (faust SASLCredentials + ssl context) is what aiokafka connects with."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from views.credentials import broker_credentials

    topic, bootstrap = secured.topic(), secured.kafka.bootstrap_servers
    auth = credentials_to_aiokafka_auth(broker_credentials(secured.security.client_properties()))

    async def roundtrip() -> bytes:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **auth)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"over SASL_SSL")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **auth)
        await consumer.start()
        try:
            return (await consumer.getone()).value
        finally:
            await consumer.stop()

    assert asyncio.run(asyncio.wait_for(roundtrip(), 60)) == b"over SASL_SSL"
