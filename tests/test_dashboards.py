"""The Grafana dashboard, its provisioning and the alert rules: every PromQL query names only metrics that
a real worker run exports on /metrics, the rule file has Prometheus' structure (promtool is not installed
here), and the PrometheusRule manifest carries the same rules."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devtools.harness.listings import invalid_samples, sample_listings
from devtools.harness.producer import produce_records
from tests.test_pipeline import counter, make_config, run_until

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "enrich.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"

# PromQL words that are not metric names: operators, modifiers and the label lists they take.
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "offset", "atan2", "inf", "nan"}  # fmt: skip
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small reader: strings, label matchers, ranges,
    grouping label lists and function calls are taken out first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        follows = text[match.end() :].lstrip()
        if follows.startswith("(") or word.lower() in _KEYWORDS or _DURATION.match(word):
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent or unit of a number (1e3)
        names.add(word)
    return names


def test_metric_names_reader() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x",le!="1"}[5m]))) > 60 '
        "and on (topic) deriv(sum by (topic) (b)[15m:1m]) > 1e3 or absent(c) unless d offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _dashboard_queries() -> list[str]:
    return [target["expr"] for panel in _dashboard()["panels"] for target in panel.get("targets", [])]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported_names(kafka, tiny_model_dir: Path) -> set[str]:
    """Sample names of a real worker's /metrics body (`WorkerMetrics.export()`, what the endpoint serves)
    after it enriched listings and dead-lettered bad ones, its lag reported."""
    from workers.runtime.assembly import build_worker

    bootstrap = kafka.bootstrap_servers
    topics = tuple(f"dash-{kind}-{uuid.uuid4().hex[:10]}" for kind in ("in", "out", "dlq"))
    for topic in topics:
        kafka.create_topic(topic, partitions=2 if topic == topics[0] else 1)
    produce_records(bootstrap, topics[0], [*sample_listings(16, id_prefix="D"), *invalid_samples()[:2]])
    worker = build_worker(make_config(bootstrap, tiny_model_dir, topics, "g-dashboards"))  # type: ignore[arg-type]
    body: list[bytes] = []

    def done() -> bool:
        if counter(worker, "enrich_events_out") + counter(worker, "enrich_dlq") < 18:
            return False
        body[:] = [worker.metrics.export()]  # while running: the lag series exist until the worker leaves
        return b"enrich_consumer_lag{" in body[0]

    asyncio.run(run_until([worker], done))
    assert body and b"enrich_consumer_lag{" in body[0], "the run did not finish"
    text = body[0].decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.services
def test_every_dashboard_and_alert_query_uses_exported_metrics(exported_names: set[str]) -> None:
    assert {"enrich_freshness_seconds_bucket", "enrich_model_info", "process_resident_memory_bytes",
            "enrich_consumer_lag", "enrich_paused_partitions"} <= exported_names  # fmt: skip
    queries = {"dashboard": _dashboard_queries(), "alerts": [rule["expr"] for rule in _alert_rules()]}
    for source, exprs in queries.items():
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{source}: no metric in {expr!r}"
            assert names <= exported_names, f"{source}: {names - exported_names} not exported ({expr!r})"


def test_dashboard_has_the_panels_operators_look_for() -> None:
    dashboard = _dashboard()
    queries = " ".join(_dashboard_queries())
    for metric in ("enrich_events_out_total", "enrich_freshness_seconds_bucket", "enrich_consumer_lag",
                   "enrich_cache_hits_total", "enrich_dlq_total", "enrich_circuit_state",
                   "enrich_batch_size_bucket", "enrich_inference_latency_seconds_bucket"):  # fmt: skip
        assert metric in queries, f"no panel shows {metric}"
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(enrich_freshness_seconds_bucket" in queries
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(set(cells)) == len(cells), "two panels at one place"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"


def test_grafana_provisioning_points_at_the_dashboards_and_prometheus() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [source] = datasource["datasources"]
    variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert (source["type"], source["uid"]) == ("prometheus", variable["current"]["value"])
    [provider] = yaml.safe_load((provisioning / "dashboards" / "enrich.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


_DURATION_FIELD = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def test_alert_rules_have_prometheus_rule_file_structure() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    names = set()
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert rule["alert"] not in names, f"alert {rule['alert']} twice"
            names.add(rule["alert"])
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert _DURATION_FIELD.match(rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    assert {"EnrichConsumerLagGrowing", "EnrichCircuitBreakerOpen", "EnrichDeadLetterRate",
            "EnrichNoOutputWhileLagging"} <= names  # fmt: skip


def test_prometheus_rule_manifest_carries_the_same_rules() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_compose_prometheus_loads_the_alert_rules() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
