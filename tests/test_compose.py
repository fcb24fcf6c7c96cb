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
    kafka, defaults = config.kafka, worker_config.KafkaConfig()
    topics = {kafka.input_topic, kafka.output_topic, kafka.dlq_topic, kafka.control_topic}
    expected = {defaults.input_topic, defaults.output_topic, defaults.dlq_topic, defaults.control_topic}
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

IMAGE_SOURCES = {"pyproject.toml", "README.md", "workers"}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _copied_sources() -> set[str]:
    sources = set()
    for keyword, arguments in _dockerfile_instructions():
        if keyword in ("COPY", "ADD"):
            words = [word for word in arguments.split() if not word.startswith("--")]
            sources |= {word.rstrip("/").removeprefix("./") for word in words[:-1]}
    return sources


def _normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _base_distributions() -> set[str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_normalize(re.split(r"[\[<>=!~;\s]", requirement)[0]) for requirement in dependencies}


def _base_import_names() -> set[str]:
    """Top-level modules that the base dependencies provide (as installed here), plus their own names."""
    from importlib.metadata import packages_distributions

    base = _base_distributions()
    provided = {name for name, dists in packages_distributions().items()
                if any(_normalize(dist) in base for dist in dists)}  # fmt: skip
    return provided | {name.replace("-", "_") for name in base}


def _image_packages() -> list[str]:
    """What `pip install .` finds in the image's build context: pyproject's packages.find over the copied
    directories only."""
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = find_packages(where=str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    return [package for package in found if package.split(".")[0] in _copied_sources()]


def test_worker_dockerfile_copies_existing_paths() -> None:
    for source in _copied_sources():
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


def test_worker_dockerfile_copies_only_the_runtime_package() -> None:
    """training/, views/, devtools/ (and tests, models, caches) never enter the image."""
    assert _copied_sources() == IMAGE_SOURCES


def test_worker_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    assert lines[0] == "*", "the build context is an allow-list"
    assert {line[1:].rstrip("/") for line in lines if line.startswith("!")} == IMAGE_SOURCES


def test_worker_image_installs_from_pyproject_alone() -> None:
    """One non-editable `pip install .`: no hand-kept requirements file, no editable source tree."""
    runs = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "RUN"]
    installs = [command.strip() for run in runs for command in run.split("&&") if "pip install" in command]
    assert installs == ["pip install ."], installs
    assert not list((ROOT / "deploy").glob("*requirements*.txt")), "pyproject.toml is the one dependency list"
    assert ("ENTRYPOINT", '["enrich"]') in _dockerfile_instructions()
    assert any(keyword == "USER" and arguments != "root" for keyword, arguments in _dockerfile_instructions())


def test_worker_image_packages_are_workers_with_its_schemas() -> None:
    packages = _image_packages()
    assert {package.split(".")[0] for package in packages} == {"workers"}
    inits = (ROOT / "workers").rglob("__init__.py")
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in inits}
    assert set(packages) == on_disk, f"sub-packages left out of the image: {on_disk - set(packages)}"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in package_data.items():
        if package.split(".")[0] in _copied_sources():
            for pattern in patterns:
                matches = list((ROOT / package.replace(".", "/")).glob(pattern))
                assert matches, f"package data {package}: {pattern} matches nothing"
    assert "workers.contract" in package_data


def _workers_imports() -> set[str]:
    imported = set()
    for path in (ROOT / "workers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    return imported


def test_worker_image_installs_every_third_party_import_of_workers() -> None:
    third_party = _workers_imports() - set(sys.stdlib_module_names) - {"workers", "__future__"}
    assert {"confluent_kafka", "onnxruntime", "tritonclient"} <= third_party, "the walk sees the sub-packages"
    missing = third_party - _base_import_names()
    assert not missing, f"imported by workers/ but not provided by pyproject's base dependencies: {missing}"


def test_worker_image_has_no_training_or_dev_dependencies() -> None:
    base = _base_distributions()
    for heavy in ("torch", "transformers", "matplotlib", "faust-streaming", "onnx", "scikit-learn", "pytest"):
        assert heavy not in base, f"{heavy} is a base dependency: it would enter the worker image"


def _worker_image_commands() -> set[str]:
    """The subcommands `enrich` has in the image: the runtime's own (entry points need training/ etc.)."""
    import argparse

    from workers import commands

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    commands.register(subparsers)
    return set(subparsers.choices)


def test_compose_services_of_the_worker_image_run_its_commands(compose: dict[str, Any]) -> None:
    image_services = {name: service for name, service in compose["services"].items()
                      if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}  # fmt: skip
    assert set(image_services) == {"worker"}
    for name, service in image_services.items():
        command = service.get("command", ["worker"])  # the image's CMD
        assert command[0] in _worker_image_commands(), f"{name} runs `enrich {command[0]}`: not in the image"
    assert _worker_image_commands() == {"worker", "tail", "dlq", "rollout"}


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
import importlib, importlib.abc, pkgutil, sys

allowed = set(sys.argv[1].split(","))
blocked = {"torch", "transformers", "faust", "aiokafka", "onnx", "onnxscript", "sklearn", "matplotlib",
           "tqdm", "psutil", "huggingface_hub", "safetensors", "yaml", "pytest",
           "training", "views", "devtools"} - allowed

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the worker image)", name=name)
        return None

sys.meta_path.insert(0, Block())
from workers.cli import build_parser
parser = build_parser()
commands = next(a for a in parser._actions if a.dest == "command").choices
assert set(commands) == {"worker", "tail", "dlq", "rollout"}, sorted(commands)
import workers
modules = [info.name for info in pkgutil.walk_packages(workers.__path__, "workers.")]
for name in modules:
    importlib.import_module(name)
print(len(modules), "ok")
"""


def test_worker_cli_and_modules_import_without_training_dependencies() -> None:
    """What the image lacks (torch, transformers, Faust, training/, devtools/, ...) is never imported by
    `enrich worker` or any module of workers/."""
    import subprocess

    modules = len(list((ROOT / "workers").rglob("*.py"))) - 1  # all but workers/__init__.py itself
    allowed = ",".join(_base_import_names())
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TRAINING_DEPENDENCIES, allowed], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.split() == [str(modules), "ok"], result.stderr[-3000:]
