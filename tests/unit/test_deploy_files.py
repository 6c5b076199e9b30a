"""The multi-machine files are valid: compose YAML, the workers' config, Prometheus' config
and alert rules, the Grafana dashboard."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY, generate_latest

from mailstream.config.load import load_config
from mailstream.kafka.local_cluster import KAFKA_VERSION
from tests.system_packages import install_debian_package

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Metric names in PromQL: mailstream's own, Faust's sensors and the Python client's.
METRIC_NAME = re.compile(r"\b(?:mailstream|faust|process|python)_[A-Za-z0-9_]+")
SAMPLE_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return board


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every panel's queries and the template variables' (rows hold no query)."""
    exprs = [t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    return exprs


def deploy_metric_names() -> set[str]:
    """The metric names the alert rules and the dashboard's queries use."""
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_queries(dashboard())
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def exported_names(scrape: str) -> set[str]:
    """The sample names a Prometheus text page serves, and those of its families declared
    without a sample yet (a labelled gauge none of whose label sets was set)."""
    names = set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.update(family + suffix for suffix in SAMPLE_SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_compose_file_wires_workers_prometheus_and_the_smtp_sink() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"worker-1", "worker-2", "prometheus", "mailpit"} <= set(services)
    for name in ("worker-1", "worker-2"):
        assert set(services[name]["depends_on"]) == {"kafka-1", "kafka-2", "kafka-3"}
    for name in ("worker-1", "worker-2"):
        env = services[name]["environment"]
        assert env["MAILSTREAM_CANONICAL_URL"] == f"http://{name}:6066"
        assert "?" in env["MAILSTREAM_ADMIN_TOKEN"], "secrets come from the host, required"
        assert "?" in env["MAILSTREAM_CLUSTER_SECRET"], "the workers share one, required"
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["worker-1:6066", "worker-2:6066"]


def test_the_compose_cluster_is_the_one_the_suite_tests() -> None:
    """Three KRaft nodes of the release the Kafka tier runs, replicated as it is."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nodes = {name: s for name, s in services.items() if name.startswith("kafka-")}
    assert len(nodes) == 3
    voters = set()
    for name, node in nodes.items():
        env = node["environment"]
        assert node["image"] == f"apache/kafka:{KAFKA_VERSION}"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3
        voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({n["environment"]["KAFKA_NODE_ID"] for n in nodes.values()}) == 3


def test_the_workers_config_is_valid() -> None:
    config = load_config(ROOT / "deploy" / "mailstream.yaml", env={})
    assert config.broker.embedded is False
    assert (config.topics.replication, config.topics.min_insync_replicas) == (3, 2)
    assert config.bootstrap_servers == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert config.delivery.provider == "smtp" and config.providers.smtp is not None
    assert config.providers.smtp.host == "mailpit"


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = install_debian_package("promtool", "prometheus")
    done = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_loads_the_alert_rules() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["alerts.yml"]


def test_promtool_accepts_the_alert_rules_and_their_unit_tests_pass() -> None:
    promtool = install_debian_package("promtool", "prometheus")
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run(
            [promtool, *command], cwd=DEPLOY, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_says_how_bad_it_is_and_what_to_do_and_is_tested_both_ways() -> None:
    tests = yaml.safe_load((DEPLOY / "alerts.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    documented = (ROOT / "docs" / "operations.md").read_text()
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["for"], name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no test where it is quiet"
        assert f"| `{name}` |" in documented, f"{name} is not in docs/operations.md"


def test_the_dashboard_has_a_query_on_every_panel_and_a_prometheus_to_choose() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert METRIC_NAME.search(target["expr"]), (panel["title"], target["expr"])
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]


def test_the_rules_and_the_dashboard_use_metrics_mailstream_defines() -> None:
    """Quick to fail on a misspelt name; tests/integration/test_dashboard.py checks every
    name against a running worker's /metrics."""
    import mailstream.observability.metrics  # noqa: F401  (registers them)

    defined = exported_names(generate_latest(REGISTRY).decode())
    ours = {name for name in deploy_metric_names() if name.startswith("mailstream_")}
    assert ours, "the rules and the dashboard use mailstream's own metrics"
    assert not ours - defined, sorted(ours - defined)
