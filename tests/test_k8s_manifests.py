"""deploy/k8s rendered as `kubectl kustomize` renders it, every object validated against the Kubernetes
JSON schemas (kubernetes-validate, strict: unknown fields fail) and the CRDs (KEDA, Prometheus Operator)
against the fields their documentation lists; then the manifests checked against each other and against
the code: settings, ports, probes, grace period, stable transactional ids, model delivery, topics."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from workers.runtime import config as worker_config
from workers.runtime.worker import SHUTDOWN_FLUSH_S
from workers.stages.commit_policy import ABORT_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes still in common support, and the newest whose schemas the package ships.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

Objects = dict[tuple[str, str], dict[str, Any]]


def render() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/k8s` (kubectl ships kustomize): the objects `kubectl apply -k` sends."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def k8s(rendered: list[dict[str, Any]]) -> Objects:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in rendered}


# ---- schemas -------------------------------------------------------------------------------------------

# Fields of the custom resources as their documentation lists them (KEDA 2.x concepts and scaler pages,
# Prometheus Operator API reference): a dict is an object's allowed fields (value: the rule for the
# field's value), a list [rule] a list of such values, None any value.
_SECRET_REF = {"parameter": None, "name": None, "key": None}
_KEDA_KAFKA_METADATA = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
    "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions", "version", "partitionLimitation",
    "sasl", "tls", "unsafeSsl", "bootstrapServersFromEnv", "consumerGroupFromEnv", "topicFromEnv",
}  # fmt: skip
_KEDA_KAFKA_AUTH = {
    "sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword", "keyEncoding",
    "oauthTokenEndpointUri", "scopes", "oauthExtensions", "awsRegion", "awsAccessKeyID", "awsSecretAccessKey",
    "realm", "kerberosConfig", "serviceName", "keytab", "unsafeSsl",
}  # fmt: skip
_METADATA = {"name": None, "namespace": None, "labels": None, "annotations": None}
_RELABEL = {"sourceLabels": None, "separator": None, "targetLabel": None, "regex": None, "modulus": None,
            "replacement": None, "action": None}  # fmt: skip


def _crd(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": None, "kind": None, "metadata": _METADATA, "spec": spec}


CRD_FIELDS: dict[str, dict[str, Any]] = {
    "ScaledObject": _crd({
        "scaleTargetRef": {"apiVersion": None, "kind": None, "name": None, "envSourceContainerName": None},
        "pollingInterval": None, "cooldownPeriod": None, "initialCooldownPeriod": None,
        "idleReplicaCount": None, "minReplicaCount": None, "maxReplicaCount": None,
        "fallback": {"failureThreshold": None, "replicas": None, "behavior": None},
        "advanced": {"restoreToOriginalReplicaCount": None,
                     "horizontalPodAutoscalerConfig": {"name": None, "behavior": None},
                     "scalingModifiers": {"formula": None, "target": None, "activationTarget": None,
                                          "metricType": None}},
        "triggers": [{"type": None, "name": None, "metadata": None, "metricType": None,
                      "useCachedMetrics": None, "authenticationRef": {"name": None, "kind": None}}],
    }),
    "TriggerAuthentication": _crd({
        "secretTargetRef": [_SECRET_REF], "configMapTargetRef": [_SECRET_REF],
        "env": [{"parameter": None, "name": None, "containerName": None}],
        "podIdentity": {"provider": None, "identityId": None, "roleArn": None, "identityOwner": None,
                        "identityTenantId": None, "identityAuthorityHost": None},
        "hashiCorpVault": None, "azureKeyVault": None, "awsSecretManager": None, "gcpSecretManager": None,
        "boundServiceAccountToken": [{"parameter": None, "serviceAccountName": None}],
    }),
    "PodMonitor": _crd({
        "selector": {"matchLabels": None, "matchExpressions": None}, "namespaceSelector": None,
        "jobLabel": None, "podTargetLabels": None, "sampleLimit": None, "targetLimit": None,
        "labelLimit": None, "attachMetadata": None,
        "podMetricsEndpoints": [{
            "port": None, "portNumber": None, "targetPort": None, "path": None, "scheme": None,
            "params": None, "interval": None, "scrapeTimeout": None, "honorLabels": None,
            "honorTimestamps": None,
            "relabelings": [_RELABEL], "metricRelabelings": [_RELABEL], "basicAuth": None,
            "bearerTokenSecret": None, "authorization": None, "oauth2": None, "tlsConfig": None,
            "followRedirects": None, "enableHttp2": None, "filterRunning": None, "proxyUrl": None,
        }],
    }),
    "PrometheusRule": _crd({"groups": [{
        "name": None, "interval": None, "limit": None, "query_offset": None, "labels": None,
        "partial_response_strategy": None,
        "rules": [{"alert": None, "record": None, "expr": None, "for": None, "keep_firing_for": None,
                   "labels": None, "annotations": None}],
    }]}),
}  # fmt: skip
CRD_API_VERSIONS = {
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}


def unknown_fields(value: Any, rule: Any, where: str = "") -> list[str]:
    """Paths of `value` that `rule` does not allow (see CRD_FIELDS)."""
    if rule is None:
        return []
    if isinstance(rule, list):
        assert isinstance(value, list), f"{where}: a list expected"
        return [bad for i, item in enumerate(value) for bad in unknown_fields(item, rule[0], f"{where}[{i}]")]
    assert isinstance(value, dict), f"{where}: an object expected"
    bad = [f"{where}.{key}" for key in value if key not in rule]
    return bad + [
        b
        for key, item in value.items()
        if key in rule
        for b in unknown_fields(item, rule[key], f"{where}.{key}")
    ]


def test_custom_resource_checker_rejects_unknown_fields() -> None:
    scaled = {"spec": {"maxReplicaCount": 3, "triggers": [{"type": "kafka", "authRef": {"name": "x"}}],
                       "advanced": {"horizontalPodAutoscalerConfig": {"behaviour": {}}}}}  # fmt: skip
    assert unknown_fields(scaled, CRD_FIELDS["ScaledObject"]) == [
        ".spec.triggers[0].authRef",
        ".spec.advanced.horizontalPodAutoscalerConfig.behaviour",
    ]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
                                      "date": {}}, KUBERNETES_VERSIONS[-1], strict=True)  # fmt: skip


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_its_schema(rendered: list[dict[str, Any]], version: str) -> None:
    kinds = set()
    for doc in rendered:
        kinds.add(doc["kind"])
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") == "enrich", name
        if doc["kind"] in CRD_FIELDS:
            assert doc["apiVersion"] == CRD_API_VERSIONS[doc["kind"]], name
            assert not unknown_fields(doc, CRD_FIELDS[doc["kind"]]), (
                name,
                unknown_fields(doc, CRD_FIELDS[doc["kind"]]),
            )
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name} against Kubernetes {version}: {err.message} at {list(err.path)}")
    assert {"StatefulSet", "Deployment", "Job", "ScaledObject", "PodMonitor", "PrometheusRule",
            "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds  # fmt: skip


def test_keda_objects_use_documented_kafka_parameters(k8s: Objects) -> None:
    for (kind, name), doc in k8s.items():
        if kind == "ScaledObject":
            for trigger in doc["spec"]["triggers"]:
                assert trigger["type"] == "kafka", name
                assert set(trigger["metadata"]) <= _KEDA_KAFKA_METADATA, (
                    set(trigger["metadata"]) - _KEDA_KAFKA_METADATA
                )
                assert all(isinstance(v, str) for v in trigger["metadata"].values()), (
                    "metadata values are strings"
                )
                ref = trigger.get("authenticationRef")
                if ref is not None:
                    assert (ref.get("kind", "TriggerAuthentication"), ref["name"]) in k8s, ref
        if kind == "TriggerAuthentication":
            parameters = [ref["parameter"] for key in ("secretTargetRef", "configMapTargetRef", "env")
                          for ref in doc["spec"].get(key, [])]  # fmt: skip
            assert set(parameters) <= _KEDA_KAFKA_AUTH, set(parameters) - _KEDA_KAFKA_AUTH


# ---- the manifests against each other and the code ---------------------------------------------------


def _known_settings() -> set[str]:
    sections = [worker_config.WorkerConfig] + [
        f.type if isinstance(f.type, type) else getattr(worker_config, str(f.type))
        for f in dataclasses.fields(worker_config.WorkerConfig) if "env" not in f.metadata
    ]  # fmt: skip
    return {f.metadata["env"] for cls in sections for f in dataclasses.fields(cls) if "env" in f.metadata}


def _flag(args: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {args}"
    return values[0]


def _config(k8s: Objects) -> worker_config.WorkerConfig:
    return worker_config.load_config(env=k8s[("ConfigMap", "enrich-worker-env")]["data"])


def _pod(k8s: Objects, kind: str, name: str) -> dict[str, Any]:
    return dict(k8s[(kind, name)]["spec"]["template"]["spec"])


def _pod_labels(k8s: Objects, kind: str, name: str) -> dict[str, str]:
    return dict(k8s[(kind, name)]["spec"]["template"]["metadata"]["labels"])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_worker_settings_parse_and_match_keda(k8s: Objects) -> None:
    config_map = k8s[("ConfigMap", "enrich-worker-env")]["data"]
    assert set(config_map) <= _known_settings(), set(config_map) - _known_settings()
    config = _config(k8s)
    scaled = k8s[("ScaledObject", "enrich-worker")]["spec"]
    target = scaled["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "StatefulSet")
    assert ("StatefulSet", target["name"]) in k8s
    trigger = scaled["triggers"][0]["metadata"]
    assert trigger["consumerGroup"] == config.kafka.group_id == "listing-enrichment"
    assert trigger["topic"] == config.kafka.input_topic
    assert trigger["bootstrapServers"] == config.kafka.bootstrap_servers

    container = _pod(k8s, "StatefulSet", target["name"])["containers"][0]
    assert container["args"] == ["worker"]
    assert container["envFrom"][0]["configMapRef"]["name"] == "enrich-worker-env"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == config.metrics.port == 9108
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_exactly_once_workers_get_a_stable_transactional_id(k8s: Objects) -> None:
    """The pod name (stable in a StatefulSet) is ENRICH_WORKER_ID, which names the transactional.id."""
    from workers.runtime.producer import producer_settings

    worker = k8s[("StatefulSet", "enrich-worker")]
    assert ("Service", worker["spec"]["serviceName"]) in k8s
    assert k8s[("Service", worker["spec"]["serviceName"])]["spec"]["clusterIP"] == "None"
    env = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ENRICH_WORKER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    config = dataclasses.replace(_config(k8s), worker_id="enrich-worker-0")
    eos = dataclasses.replace(config.kafka, exactly_once=True)
    assert (
        producer_settings(eos, config.worker_id)["transactional.id"] == "listing-enrichment.enrich-worker-0"
    )


def test_grace_period_covers_drain_flush_and_abort(k8s: Objects) -> None:
    config = _config(k8s)
    needed = config.kafka.drain_timeout_s + SHUTDOWN_FLUSH_S + ABORT_TIMEOUT_S
    assert _pod(k8s, "StatefulSet", "enrich-worker")["terminationGracePeriodSeconds"] >= needed == 70


def test_startup_probe_waits_for_the_backend_check(k8s: Objects) -> None:
    """/readyz: the broker and topics checked, the model loaded, the backend checked it, loop running; each
    check waits up to ENRICH_STARTUP_TIMEOUT_S."""
    probe = _pod(k8s, "StatefulSet", "enrich-worker")["containers"][0]["startupProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "metrics"}
    start_wait = 2 * _config(k8s).startup_timeout_s  # check_broker, then wait_for_backend
    assert probe["periodSeconds"] * probe["failureThreshold"] > start_wait


def test_model_reaches_workers_and_triton_without_volume_claims(k8s: Objects) -> None:
    assert not [key for key in k8s if key[0] in ("PersistentVolumeClaim", "PersistentVolume")]
    config = _config(k8s)
    workloads = (("StatefulSet", "enrich-worker", "worker", str(config.backend.model_dir)),
                 ("Deployment", "triton", "tritonserver", "/models"))  # fmt: skip
    for kind, name, container, path in workloads:
        pod = _pod(k8s, kind, name)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not any("persistentVolumeClaim" in v for v in volumes.values()), name
        main = next(c for c in pod["containers"] if c["name"] == container)
        [mount] = [m for m in main["volumeMounts"] if m["mountPath"] == path]
        assert "emptyDir" in volumes[mount["name"]], f"{name}: {path} is not an emptyDir"
        # The init container copies the model image's files into that emptyDir.
        [init] = pod["initContainers"]
        assert "/model:" in init["image"]
        [init_mount] = [m for m in init["volumeMounts"] if m["name"] == mount["name"]]
        assert init["command"][:2] == ["cp", "-R"] and init["command"][-1] == init_mount["mountPath"] + "/"
    dockerfile = (ROOT / "deploy" / "model.Dockerfile").read_text()
    for source in ("/model/.", "/triton/."):
        assert f" {source.removesuffix('/.')}/" in dockerfile.replace("\n", " ")
    copied = {init["command"][2] for kind, name, _, _ in workloads
              for init in _pod(k8s, kind, name)["initContainers"]}  # fmt: skip
    assert copied == {"/model/.", "/triton/."}
    assert (ROOT / "triton_repo" / "gpu" / config.backend.triton_model / "config.pbtxt").is_file()


def test_worker_reaches_triton_service(k8s: Objects) -> None:
    config = _config(k8s)
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    service = k8s[("Service", "triton")]
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert config.backend.triton_url == f"triton.{namespace}.svc:{grpc_port}"
    assert service["spec"]["selector"].items() <= _pod_labels(k8s, "Deployment", "triton").items()
    container = _pod(k8s, "Deployment", "triton")["containers"][0]
    assert _flag(container["args"], "load-model") == config.backend.triton_model
    assert _flag(container["args"], "grpc-port") == str(grpc_port)
    assert _flag(container["args"], "model-repository") == "/models"
    assert config.backend.triton_model in container["readinessProbe"]["httpGet"]["path"]


def test_triton_asks_for_a_gpu_tolerates_gpu_nodes_and_scales_on_its_own(k8s: Objects) -> None:
    pod = _pod(k8s, "Deployment", "triton")
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    hpa = k8s[("HorizontalPodAutoscaler", "triton")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_disruption_budgets_select_the_workloads(k8s: Objects) -> None:
    for kind, name in (("StatefulSet", "enrich-worker"), ("Deployment", "triton")):
        budget = k8s[("PodDisruptionBudget", name)]["spec"]
        assert budget["selector"]["matchLabels"].items() <= _pod_labels(k8s, kind, name).items()
        assert budget["maxUnavailable"] == 1


def test_topics_job_creates_the_configured_topics_with_keda_partitions(k8s: Objects) -> None:
    config = _config(k8s)
    job = k8s[("Job", "enrich-topics")]["spec"]["template"]["spec"]
    [container] = job["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": "enrich-worker-env"}}]
    script = container["args"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    max_replicas = k8s[("ScaledObject", "enrich-worker")]["spec"]["maxReplicaCount"]
    assert int(env["PARTITIONS"]) == max_replicas
    for variable, topic in (("ENRICH_INPUT_TOPIC", config.kafka.input_topic),
                            ("ENRICH_OUTPUT_TOPIC", config.kafka.output_topic),
                            ("ENRICH_DLQ_TOPIC", config.kafka.dlq_topic),
                            ("ENRICH_CONTROL_TOPIC", config.kafka.control_topic),
                            ("ENRICH_SHADOW_TOPIC", config.kafka.shadow_topic)):  # fmt: skip
        assert f'create "${variable}"' in script and topic
    assert 'create "$ENRICH_CONTROL_TOPIC" 1 --config cleanup.policy=compact' in script
    assert "--if-not-exists" in script and '--bootstrap-server "$ENRICH_KAFKA_BOOTSTRAP"' in script
    assert job["restartPolicy"] == "OnFailure"


def test_pod_monitors_scrape_the_metrics_ports_instead_of_annotations(k8s: Objects) -> None:
    for kind, name in (("StatefulSet", "enrich-worker"), ("Deployment", "triton")):
        metadata = k8s[(kind, name)]["spec"]["template"]["metadata"]
        assert not any(key.startswith("prometheus.io/") for key in metadata.get("annotations", {})), name
        monitor = k8s[("PodMonitor", name)]["spec"]
        assert monitor["selector"]["matchLabels"].items() <= metadata["labels"].items()
        ports = {p["name"] for c in _pod(k8s, kind, name)["containers"] for p in c.get("ports", [])}
        assert {endpoint["port"] for endpoint in monitor["podMetricsEndpoints"]} <= ports
