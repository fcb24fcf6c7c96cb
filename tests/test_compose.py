"""docker-compose.yml and the worker image agree with each other and with the code: service names and ports
line up with the worker's ENRICH_* settings (read by workers/runtime/config.py itself), the file's mounts
resolve as compose resolves them to files in the repo (or to what model-init makes), topic names and
partitions match the worker and KEDA, and the image installs what workers import. The Kubernetes
manifests are tests/test_k8s_manifests.py's."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from devtools.services.kafka_jars import KAFKA_VERSION
from tests.test_worker_image import _worker_image_commands
from workers.runtime import config as worker_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def _known_settings() -> set[str]:
    sections = [worker_config.WorkerConfig] + [
        f.type if isinstance(f.type, type) else getattr(worker_config, str(f.type))
        for f in dataclasses.fields(worker_config.WorkerConfig)
        if "env" not in f.metadata
    ]
    return {f.metadata["env"] for cls in sections for f in dataclasses.fields(cls) if "env" in f.metadata}


def _flag(args: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {args}"
    return values[0]


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ---- docker-compose.yml ------------------------------------------------------------------------------------


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka", "kafka-init", "redis", "model-init", "triton", "worker", "views", "prometheus", "grafana"
    }  # fmt: skip
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_compose_worker_settings_are_known_and_parse(compose: dict[str, Any]) -> None:
    env = compose["services"]["worker"]["environment"]
    assert set(env) <= _known_settings(), f"unknown settings: {set(env) - _known_settings()}"
    config = worker_config.load_config(env={k: str(v) for k, v in env.items()})
    assert config.backend.kind == "triton"
    assert config.kafka.group_id == "listing-enrichment"


def test_compose_worker_reaches_kafka_on_its_advertised_listener(compose: dict[str, Any]) -> None:
    kafka_env = compose["services"]["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://") for item in kafka_env["KAFKA_LISTENERS"].split(","))
    internal = advertised[kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert compose["services"]["worker"]["environment"]["ENRICH_KAFKA_BOOTSTRAP"] == internal
    assert _host_port(internal) == ("kafka", _host_port(listeners["PLAINTEXT"])[1])
    voter_port = _host_port(kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[1])[1]
    assert voter_port == _host_port(listeners[kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]])[1]
    host_port = _host_port(advertised["HOST"])[1]
    assert f"127.0.0.1:{host_port}:{host_port}" in compose["services"]["kafka"]["ports"]


def test_compose_creates_the_worker_topics(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    created = set(re.findall(r"--topic (\S+)", script))
    env = compose["services"]["worker"]["environment"]
    config = worker_config.load_config(env={k: str(v) for k, v in env.items()})
    kafka, defaults = config.kafka, worker_config.KafkaConfig()
    topics = {kafka.input_topic, kafka.output_topic, kafka.dlq_topic, kafka.control_topic, kafka.shadow_topic}
    expected = {defaults.input_topic, defaults.output_topic, defaults.dlq_topic, defaults.control_topic,
                defaults.shadow_topic}  # fmt: skip
    assert topics == created == expected
    control = f"--topic {kafka.control_topic} --partitions 1 --replication-factor 1"
    assert f"{control} --config cleanup.policy=compact" in script  # the last record per key is the state


def test_compose_worker_reaches_redis_and_triton(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = services["worker"]["environment"]
    redis_url = urlparse(env["ENRICH_REDIS_URL"])
    redis_command = services["redis"]["command"]
    redis_port = int(redis_command[redis_command.index("--port") + 1]) if "--port" in redis_command else 6379
    assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", redis_port)

    triton_args = services["triton"]["command"]
    assert env["ENRICH_TRITON_URL"] == f"triton:{_flag(triton_args, 'grpc-port')}"
    assert env["ENRICH_TRITON_MODEL"] == _flag(triton_args, "load-model")
    healthcheck = " ".join(services["triton"]["healthcheck"]["test"])
    assert f"/v2/models/{env['ENRICH_TRITON_MODEL']}/ready" in healthcheck
    for flag in ("http-port", "grpc-port", "metrics-port"):
        port = _flag(triton_args, flag)
        assert f"127.0.0.1:{port}:{port}" in services["triton"]["ports"]


def test_compose_metrics_port_lines_up_with_image_and_prometheus(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    port = worker["environment"]["ENRICH_METRICS_PORT"]
    assert port in worker["expose"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile
    assert f"127.0.0.1:{port}/healthz" in dockerfile

    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    worker_sd = jobs["enrich-worker"]["dns_sd_configs"][0]
    assert (worker_sd["names"], worker_sd["port"]) == (["worker"], int(port))
    metrics_port = _flag(compose["services"]["triton"]["command"], "metrics-port")
    assert jobs["triton"]["static_configs"][0]["targets"] == [f"triton:{metrics_port}"]


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}` / `${VAR:-default}` / `${VAR-default}` with `env` (`$$` is a literal `$`)."""
    return _INTERPOLATION.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text).replace("$$", "$")


def resolve_volume(volume: str | dict[str, Any], env: dict[str, str]) -> tuple[str, str, str]:
    """(kind, source, target) of a service's volume entry as compose reads it: in the short syntax a source
    starting with `.`, `/` or `~` is a bind mount (relative to the compose file's folder), anything else
    the name of a volume (which must be declared at the top level)."""
    if isinstance(volume, dict):
        return volume["type"], interpolate(str(volume.get("source", "")), env), volume["target"]
    parts = interpolate(volume, env).split(":")
    if len(parts) == 1:
        return "volume", "", parts[0]  # anonymous
    source, target = parts[0], parts[1]
    return ("bind" if source.startswith((".", "/", "~")) else "volume"), source, target


def _mounts(compose: dict[str, Any], env: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(service, kind, source, target) of every volume entry."""
    return [(name, *resolve_volume(volume, env)) for name, service in compose["services"].items()
            for volume in service.get("volumes", [])]  # fmt: skip


def test_volume_resolution_follows_compose_rules() -> None:
    assert resolve_volume("models/current:/model:ro", {}) == ("volume", "models/current", "/model")
    assert resolve_volume("${MODEL_DIR:-./models/current}:/model:ro", {}) == (
        "bind",
        "./models/current",
        "/model",
    )
    assert resolve_volume("${MODEL_DIR:-./models/current}:/model", {"MODEL_DIR": "/m"}) == (
        "bind",
        "/m",
        "/model",
    )
    assert resolve_volume("data:/var/lib/x", {}) == ("volume", "data", "/var/lib/x")


@pytest.mark.parametrize("env", [{}, {"MODEL_DIR": "./models/mine/v2"}], ids=["fresh-clone", "MODEL_DIR"])
def test_compose_mounts_resolve_to_repo_files_or_model_init_output(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    """On a fresh clone every bind source exists in the repo, except what model-init writes (./models/...),
    and no mount is a named volume by accident (a bare `models/x` is one) unless declared."""
    declared = set(compose.get("volumes") or {})
    init_outputs = {source for service, kind, source, _ in _mounts(compose, env) if service == "model-init"}
    for service, kind, source, _ in _mounts(compose, env):
        if kind == "volume":
            assert source in declared, f"{service}: {source!r} is a named volume that is not declared"
            continue
        assert kind == "bind" and source.startswith("./"), f"{service}: {source!r} should be relative (./)"
        path = ROOT / source
        made_by_init = any(Path(source).is_relative_to(made) for made in init_outputs)
        if source.startswith("./models"):
            assert made_by_init and "./models" in init_outputs, f"{service}: nothing makes {source}"
            assert (
                compose["services"][service].get("depends_on", {}).get("model-init", {}).get("condition")
                == "service_completed_successfully"
                or service == "model-init"
            ), service
        else:
            assert path.exists(), f"{service} mounts {source}, which is not in the repo"


def test_compose_builds_exist_with_allow_listed_contexts(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
        assert dockerfile.is_file(), name
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        if service["build"]["context"] == ".":
            assert ignore.is_file(), f"{name}: the repository root is its context without an allow-list"
            allowed = {
                line[1:].rstrip("/") for line in ignore.read_text().splitlines() if line.startswith("!")
            }
            copied = {word.rstrip("/") for line in dockerfile.read_text().splitlines()
                      if line.startswith("COPY") for word in line.split()[1:-1]}  # fmt: skip
            assert copied <= allowed, f"{name}: {copied - allowed} copied but not in the build context"


def test_compose_topic_partitions_match_keda_and_the_views(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    partitions = {topic: int(n) for topic, n in re.findall(r"--topic (\S+) --partitions (\d+)", script)}
    keda = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "keda-scaledobject.yaml").read_text())
    scaled = next(doc for doc in keda if doc["kind"] == "ScaledObject")
    maximum = scaled["spec"]["maxReplicaCount"]
    assert partitions["listings.new"] == partitions["listings.attributes"] == maximum
    views = compose["services"]["views"]["command"]
    assert int(views[views.index("--partitions") + 1]) == partitions["listings.attributes"]
    assert compose["services"]["views"]["environment"]["ENRICH_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_compose_grafana_and_prometheus_mount_the_provisioning(compose: dict[str, Any]) -> None:
    mounts = {(service, target): source for service, _, source, target in _mounts(compose, {})}
    assert mounts[("grafana", "/etc/grafana/provisioning")] == "./deploy/grafana/provisioning"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/enrich.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert mounts[("grafana", dashboards)] == "./deploy/grafana/dashboards"
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    url = urlparse(datasource["datasources"][0]["url"])
    assert url.hostname in compose["services"] and url.port == 9090
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert mounts[("prometheus", rule_file)] == "./deploy/prometheus/" + Path(rule_file).name


def test_compose_stop_grace_matches_kubernetes(compose: dict[str, Any]) -> None:
    documents = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "worker-statefulset.yaml").read_text())
    [worker] = [doc for doc in documents if doc["kind"] == "StatefulSet"]
    seconds = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert compose["services"]["worker"]["stop_grace_period"] == f"{seconds}s"


@pytest.mark.timeout(900)
def test_model_init_gives_a_fresh_clone_a_model_once(tmp_path: Path) -> None:
    """deploy/model-init.sh for real: trains and exports the tiny model into a fresh models/ and a copy of
    triton_repo/cpu, which the worker's start-up check accepts; a second run leaves them alone."""
    import os
    import shutil
    import subprocess

    from workers.runtime.assembly import check_model_dir

    models, repo = tmp_path / "models", tmp_path / "cpu"
    models.mkdir()
    shutil.copytree(ROOT / "triton_repo" / "cpu", repo, ignore=shutil.ignore_patterns("*.onnx", "*.json"))
    env = {**os.environ, "MODELS": str(models), "TRITON_REPO": str(repo), "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    env.pop("MODEL_DIR", None)
    script = str(ROOT / "deploy" / "model-init.sh")
    first = subprocess.run(
        ["bash", script], env=env, capture_output=True, text=True, timeout=850, check=False
    )
    assert first.returncode == 0, first.stderr[-3000:]
    config = worker_config.load_config(env={"ENRICH_MODEL_DIR": str(models / "current")})
    assert check_model_dir(config) == models / "current"
    for name in ("model.onnx", "labels.json", "model_info.json"):
        assert (repo / "attribute_extractor" / "1" / name).is_file(), name
    again = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "already hold a model" in again.stdout, again.stdout + again.stderr


def test_compose_services_of_the_worker_image_run_its_commands(compose: dict[str, Any]) -> None:
    image_services = {name: service for name, service in compose["services"].items()
                      if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}  # fmt: skip
    assert set(image_services) == {"worker"}
    for name, service in image_services.items():
        command = service.get("command", ["worker"])  # the image's CMD
        assert command[0] in _worker_image_commands(), f"{name} runs `enrich {command[0]}`: not in the image"
    assert _worker_image_commands() == {"worker", "tail", "dlq", "review", "predict", "replay", "rollout"}
