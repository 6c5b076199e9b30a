"""The multi-machine files are valid: compose YAML, the workers' config, Prometheus'."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from mailstream.config.load import load_config
from mailstream.kafka.local_cluster import KAFKA_VERSION
from tests.system_packages import install_debian_package

ROOT = Path(__file__).resolve().parents[2]


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
