"""Worker config: flags over ENRICH_* env vars over defaults, typed, with errors naming the setting."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from workers.contract.errors import ConfigError
from workers.runtime.config import add_config_arguments, load_config


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_match_the_deployment_contract() -> None:
    config = load_config(parse(), env={})
    assert config.kafka.group_id == "listing-enrichment"
    assert (config.kafka.input_topic, config.kafka.output_topic, config.kafka.dlq_topic) == (
        "listings.new", "listings.attributes", "listings.dlq",
    )
    assert config.metrics.port == 9108 and config.backend.kind == "onnx" and not config.kafka.exactly_once
    assert config.worker_id


def test_env_vars_and_flags_with_flags_winning() -> None:
    env = {
        "ENRICH_KAFKA_BOOTSTRAP": "k:1", "ENRICH_REDIS_URL": "redis://r:2/0", "ENRICH_TRITON_URL": "t:3",
        "ENRICH_BACKEND": "triton", "ENRICH_MODEL_DIR": "/m", "ENRICH_GROUP_ID": "g",
        "ENRICH_INPUT_TOPIC": "i", "ENRICH_OUTPUT_TOPIC": "o", "ENRICH_DLQ_TOPIC": "d",
        "ENRICH_METRICS_PORT": "0", "ENRICH_MAX_BATCH": "8", "ENRICH_EXACTLY_ONCE": "yes",
    }
    config = load_config(parse("--max-batch", "16", "--group-id", "g2"), env=env)
    assert config.kafka.bootstrap_servers == "k:1" and config.cache.redis_url == "redis://r:2/0"
    assert config.backend.triton_url == "t:3" and config.backend.kind == "triton"
    assert config.backend.model_dir == Path("/m")
    assert (config.kafka.input_topic, config.kafka.output_topic, config.kafka.dlq_topic) == ("i", "o", "d")
    assert config.metrics.port == 0 and config.kafka.exactly_once
    assert config.batch.max_batch == 16 and config.kafka.group_id == "g2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENRICH_MAX_BATCH": "many"}, "ENRICH_MAX_BATCH"),
        ({"ENRICH_MAX_BATCH": "0"}, "ENRICH_MAX_BATCH"),
        ({"ENRICH_BACKEND": "tpu"}, "ENRICH_BACKEND"),
        ({"ENRICH_EXACTLY_ONCE": "maybe"}, "ENRICH_EXACTLY_ONCE"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, env=env)


def test_help_documents_env_vars() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    text = parser.format_help()
    for env in ("ENRICH_KAFKA_BOOTSTRAP", "ENRICH_REDIS_URL", "ENRICH_METRICS_PORT", "ENRICH_MAX_WAIT_MS"):
        assert env in text


def test_boolean_settings_are_flag_pairs_over_the_env_var() -> None:
    on = {"ENRICH_EXACTLY_ONCE": "true", "ENRICH_REDIS_CLUSTER": "true"}
    assert load_config(parse("--exactly-once"), env={}).kafka.exactly_once
    assert not load_config(parse("--no-exactly-once"), env=on).kafka.exactly_once  # the flag wins
    assert load_config(parse(), env=on).kafka.exactly_once  # no flag: the env var
    assert load_config(parse("--redis-cluster"), env={}).cache.redis_cluster
    assert not load_config(parse("--no-redis-cluster"), env=on).cache.redis_cluster
    with pytest.raises(SystemExit) as exited:  # the old spelling is a usage error now
        parse("--exactly-once", "true")
    assert exited.value.code == 2


def test_choices_take_any_case_and_a_bad_flag_value_is_a_usage_error() -> None:
    config = load_config(parse("--log-level", "debug", "--auto-offset-reset", "LATEST"), env={})
    assert (config.log_level, config.kafka.auto_offset_reset) == ("DEBUG", "latest")
    assert load_config(None, env={"ENRICH_LOG_LEVEL": "Warning", "ENRICH_BACKEND": "TRITON"}).log_level == (
        "WARNING"
    )
    with pytest.raises(SystemExit) as exited:
        parse("--log-level", "verbose")
    assert exited.value.code == 2
    with pytest.raises(ConfigError, match="ENRICH_LOG_LEVEL"):
        load_config(None, env={"ENRICH_LOG_LEVEL": "verbose"})
    with pytest.raises(ConfigError, match="ENRICH_STARTUP_TIMEOUT_S"):
        load_config(None, env={"ENRICH_STARTUP_TIMEOUT_S": "0"})
