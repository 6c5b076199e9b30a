"""Topics as a worker creates them (replication, min.insync.replicas, retention, cleanup
policy, read back from the broker), and a worker refusing to start on topics that would
lose data or break its partitioning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from mailstream.config.load import parse_config
from mailstream.exceptions import BrokerError, ConfigError
from mailstream.kafka.embedded_broker import EmbeddedBroker
from mailstream.kafka.topics import create_topics, ensure_topics
from tests.integration.harness import PARTITIONS, Deployment, wait_exit

DAY_MS = 86_400_000


def expected_replication(broker: Any) -> int:
    """What an unset topics.replication resolves to: the local Kafka's
    default.replication.factor; 1 on the embedded broker (it does not say, and keeps one
    replica whatever is asked)."""
    return 1 if isinstance(broker, EmbeddedBroker) else int(broker.replication)


async def read_back(servers: str, topics: list[str]) -> dict[str, dict[str, Any]]:
    """Topic -> its settings (DescribeConfigs) and ``replicas`` (metadata)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        found: dict[str, dict[str, Any]] = {t: {} for t in topics}
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        for response in await admin.describe_configs(resources):
            for error, _msg, _type, name, entries in response.resources:
                assert error == 0, (name, error)
                found[name].update({e[0]: e[1] for e in entries})
        for described in await admin.describe_topics(topics):
            replicas = {len(p["replicas"]) for p in described["partitions"]}
            found[described["topic"]]["replicas"] = replicas
            found[described["topic"]]["partitions"] = len(described["partitions"])
        return found
    finally:
        await admin.close()


async def test_a_worker_creates_its_topics_and_changelogs_with_the_configured_settings(
    broker: Any, tmp_path: Path
) -> None:
    d = Deployment(broker, tmp_path)
    insync = 1 if isinstance(broker, EmbeddedBroker) else 2
    d.overrides["topics"] = {
        "sessions": f"{d.app_id}.sessions",
        "min_insync_replicas": insync,
        "retention": {"events": "10d", "dlq": "120d"},
    }
    d.write_config()
    worker = d.worker("w1").start()  # no setup(): the worker creates every topic
    try:
        await d.wait_ready([worker])
        topics = d.topics
        changelog = f"{d.app_id}-users-changelog"
        names = [topics["events"], topics["dlq"], topics["sends_marketing"]]
        names += [topics["suppression"], changelog]
        found = await read_back(broker.bootstrap_servers, names)
    finally:
        d.stop_all()
    replication = expected_replication(broker)
    for name in names:
        assert found[name]["replicas"] == {replication}, name
        assert found[name]["min.insync.replicas"] == str(insync), name
        assert found[name]["partitions"] == PARTITIONS, name
    assert found[topics["events"]]["retention.ms"] == str(10 * DAY_MS)
    assert found[topics["dlq"]]["retention.ms"] == str(120 * DAY_MS)
    assert found[topics["sends_marketing"]]["retention.ms"] == str(7 * DAY_MS)
    assert found[topics["events"]]["cleanup.policy"] == "delete"
    assert found[topics["suppression"]]["cleanup.policy"] == "compact"
    assert found[changelog]["cleanup.policy"] == "compact"


@pytest.mark.parametrize(
    ("wrong", "named"),
    [
        # made by hand or by an older release: compaction missing, addresses forgotten
        ("suppression", "cleanup.policy=compact"),
        # fewer partitions than the tables: users' events and state would not line up
        ("events", "fewer than topics.partitions (4)"),
    ],
)
async def test_a_worker_refuses_to_start_on_a_topic_that_would_lose_data(
    broker: Any, tmp_path: Path, wrong: str, named: str
) -> None:
    d = Deployment(broker, tmp_path)
    d.overrides["topics"] = {"sessions": f"{d.app_id}.sessions"}
    d.write_config()
    topic = d.topics[wrong]
    partitions = 2 if wrong == "events" else PARTITIONS
    await ensure_topics(broker.bootstrap_servers, [topic], partitions)
    worker = d.worker("w1").start()
    try:
        code = await wait_exit(worker, 60)
    finally:
        d.stop_all()
    lines = [line for line in worker.log_tail(200).splitlines() if line.strip()]
    assert code != 0
    assert "Traceback" not in worker.log_tail(200)
    assert len(lines) == 1, lines
    assert topic in lines[0] and named in lines[0], lines[0]


async def test_min_insync_replicas_above_the_replication_is_refused_naming_it(
    broker: Any, tmp_path: Path
) -> None:
    prefix = f"t{tmp_path.name[-8:]}".replace("_", "-")
    raw = {
        "broker": {"url": broker.url, "embedded": isinstance(broker, EmbeddedBroker)},
        "topics": {"events": f"{prefix}.events", "min_insync_replicas": 5},
    }
    config = parse_config(raw, "test", env={})
    with pytest.raises(ConfigError, match=r"topics\.min_insync_replicas: 5 is more than"):
        await create_topics(config)


@pytest.mark.only_on(
    "kafka", reason="the embedded broker accepts every topic setting and keeps one replica"
)
async def test_a_topic_setting_the_broker_refuses_stops_the_start_naming_it(
    broker: Any, tmp_path: Path
) -> None:
    prefix = f"t{tmp_path.name[-8:]}".replace("_", "-")
    names = ("events", "dlq", "sends_transactional", "sends_marketing", "feedback")
    names += ("suppression", "webhooks", "feedback_claims", "sessions")
    raw = {
        "broker": {"url": broker.url},
        "topics": {n: f"{prefix}.{n}" for n in names} | {"replication": 5},
    }
    config = parse_config(raw, "test", env={})
    with pytest.raises(BrokerError) as refused:
        await create_topics(config)
    message = str(refused.value)
    assert f"the broker refused topic {prefix}.suppression" in message
    assert "replication=5" in message and "cleanup.policy=compact" in message
    assert "cannot be reached" in message  # the broker's own reason
