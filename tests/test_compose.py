"""docker-compose.yml, the worker image and the Kubernetes manifests agree with each other and with the
code: service names and ports line up with the worker's ENRICH_* settings (read by workers/runtime/config.py
itself), mounted files exist, topic and group names match, and the image installs what workers import."""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from devtools.services.kafka_jars import KAFKA_VERSION
from workers.runtime import config as worker_config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest in deploy/k8s by (kind, name)."""
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                documents[(doc["kind"], doc["metadata"]["name"])] = doc
    return documents


def _known_settings() -> set[str]:
    sections = [worker_config.WorkerConfig] + [
        f.type if isinstance(f.type, type) else getattr(worker_config, str(f.type))
        for f in dataclasses.fields(worker_config.WorkerConfig) if "env" not in f.metadata
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
    assert set(compose["services"]) == {"kafka", "kafka-init", "redis", "triton", "worker", "prometheus"}
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
    defaults = worker_config.KafkaConfig()
    topics = {config.kafka.input_topic, config.kafka.output_topic, config.kafka.dlq_topic}
    assert topics == created == {defaults.input_topic, defaults.output_topic, defaults.dlq_topic}


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

    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    worker_sd = jobs["enrich-worker"]["dns_sd_configs"][0]
    assert (worker_sd["names"], worker_sd["port"]) == (["worker"], int(port))
    metrics_port = _flag(compose["services"]["triton"]["command"], "metrics-port")
    assert jobs["triton"]["static_configs"][0]["targets"] == [f"triton:{metrics_port}"]


def test_compose_mounts_and_builds_exist_in_the_repo(compose: dict[str, Any]) -> None:
    sources = []
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = re.match(r"(\$\{[^}]*\}|[^:]+):", volume).group(1)  # type: ignore[union-attr]
            if source.startswith("${"):
                # A generated artifact chosen at run time: its default must point into git-ignored models/.
                assert re.fullmatch(r"\$\{MODEL_DIR:-\./models/[^}]+\}", source), source
                continue
            sources.append(source)
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()
    assert sorted(sources) == ["./deploy/prometheus.yml", "./triton_repo/cpu"]
    assert (ROOT / "deploy" / "prometheus.yml").is_file()
    assert (ROOT / "triton_repo" / "cpu").is_dir(), "the CPU model repository is part of the repo"


# ---- the worker image --------------------------------------------------------------------------------------


def _requirements() -> list[str]:
    lines = (ROOT / "deploy" / "worker-requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_worker_requirements_are_copied_verbatim_from_pyproject() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(_requirements()) <= set(dependencies)


def test_worker_image_installs_every_third_party_import_of_workers() -> None:
    distributions = {re.split(r"[\[<>=!~]", line)[0] for line in _requirements()}
    import_names = {name.replace("-", "_") for name in distributions}
    project = {"workers", "enrich", "schemas", "training", "localservices", "bench"}
    imported = set()
    for path in (ROOT / "workers").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - project - {"__future__"}
    assert third_party <= import_names, f"not installed in the worker image: {third_party - import_names}"


def test_worker_dockerfile_copies_existing_paths() -> None:
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            source = line.split()[1]
            assert (ROOT / source).exists(), f"{line!r}: {source} missing"


# ---- Kubernetes --------------------------------------------------------------------------------------------


def test_k8s_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_k8s_pods_mount_claims_that_exist(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    claims = [volume["persistentVolumeClaim"]["claimName"]
              for (kind, _), doc in k8s.items() if kind == "Deployment"
              for volume in doc["spec"]["template"]["spec"].get("volumes", [])
              if "persistentVolumeClaim" in volume]
    assert sorted(claims) == ["enrich-model", "triton-model-repository"]
    assert all(("PersistentVolumeClaim", claim) in k8s for claim in claims)


def test_k8s_worker_settings_parse_and_match_keda(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    config_map = k8s[("ConfigMap", "enrich-worker-env")]["data"]
    assert set(config_map) <= _known_settings()
    config = worker_config.load_config(env=config_map)

    scaled = k8s[("ScaledObject", "enrich-worker")]["spec"]
    deployment = k8s[("Deployment", scaled["scaleTargetRef"]["name"])]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == config.kafka.group_id == "listing-enrichment"
    assert trigger["metadata"]["topic"] == config.kafka.input_topic
    assert trigger["metadata"]["bootstrapServers"] == config.kafka.bootstrap_servers

    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["worker"]
    assert container["envFrom"][0]["configMapRef"]["name"] == "enrich-worker-env"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == config.metrics.port == 9108
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] > config.kafka.drain_timeout_s


def test_k8s_worker_reaches_triton_service(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = worker_config.load_config(env=k8s[("ConfigMap", "enrich-worker-env")]["data"])
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    service = k8s[("Service", "triton")]
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert config.backend.triton_url == f"triton.{namespace}.svc:{grpc_port}"

    triton = k8s[("Deployment", "triton")]
    assert service["spec"]["selector"].items() <= triton["spec"]["template"]["metadata"]["labels"].items()
    container = triton["spec"]["template"]["spec"]["containers"][0]
    assert _flag(container["args"], "load-model") == config.backend.triton_model
    assert _flag(container["args"], "grpc-port") == str(grpc_port)
    assert config.backend.triton_model in container["readinessProbe"]["httpGet"]["path"]


_WITHOUT_TRAINING_DEPENDENCIES = """
import importlib, importlib.abc, pathlib, sys

allowed = set(sys.argv[1].split(","))
blocked = {"torch", "transformers", "faust", "aiokafka", "onnx", "onnxscript", "sklearn", "matplotlib",
           "tqdm", "psutil", "huggingface_hub", "safetensors"} - allowed

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not installed in the worker image")
        return None

sys.meta_path.insert(0, Block())
from workers.cli import build_parser
build_parser()
for path in sorted(pathlib.Path("workers").glob("*.py")):
    importlib.import_module(f"workers.{path.stem}")
print("ok")
"""


def test_worker_cli_and_modules_import_without_training_dependencies() -> None:
    """What the image lacks (torch, transformers, Faust, ...) is never imported by `enrich worker`."""
    import subprocess

    installed = {re.split(r"[\[<>=!~]", line)[0].replace("-", "_") for line in _requirements()}
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TRAINING_DEPENDENCIES, ",".join(installed)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
