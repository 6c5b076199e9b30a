"""The config rules that keep a worker joinable and its data safe on Apache Kafka: which
broker the config means, group timeouts Kafka accepts, and the settings each topic is
created with and checked for."""

from __future__ import annotations

from typing import Any

import pytest

from mailstream.config.load import parse_config
from mailstream.exceptions import ConfigError
from mailstream.kafka.topics import changelog_configs, topic_configs, topic_problems

SOURCE = "mailstream.yaml"
DAY_MS = 86_400_000


def broker_section(raw: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return parse_config({"broker": raw}, SOURCE, env=env or {}).broker


def test_a_config_that_does_not_name_the_broker_gets_no_embedded_workarounds() -> None:
    from mailstream.kafka.embedded_quirks import fetch_max_wait

    config = parse_config({}, SOURCE, env={})
    assert config.broker.embedded is False
    assert fetch_max_wait(config, send_path=True) is None  # Kafka answers at once


@pytest.mark.parametrize(
    ("raw", "env", "embedded"),
    [
        ({"embedded": True}, {}, True),
        ({}, {"MAILSTREAM_BROKER_EMBEDDED": "true"}, True),  # how `mailstream demo` says it
        ({"embedded": True}, {"MAILSTREAM_BROKER_EMBEDDED": "false"}, False),
    ],
)
def test_the_embedded_broker_only_when_said(
    raw: dict[str, Any], env: dict[str, str], embedded: bool
) -> None:
    assert broker_section(raw, env).embedded is embedded


@pytest.mark.parametrize(
    ("raw", "session", "heartbeat", "rebalance", "max_poll"),
    [
        # Apache Kafka: inside its 6 s .. 30 min session bounds, a rebalance long enough
        # for a slow flush
        ({}, 10.0, 3.0, 60.0, 300.0),
        # the embedded broker keeps its short, tested timeouts
        ({"embedded": True}, 6.0, 1.0, 3.0, 300.0),
        ({"embedded": "true"}, 6.0, 1.0, 3.0, 300.0),
        # what the config says wins, and a default fills only what it leaves out
        ({"session_timeout": "30s"}, 30.0, 3.0, 60.0, 300.0),
        (
            {"embedded": True, "session_timeout": "3s", "heartbeat_interval": "500ms"},
            3.0,
            0.5,
            3.0,
            300.0,
        ),
        ({"rebalance_timeout": "2m", "max_poll_interval": "10m"}, 10.0, 3.0, 120.0, 600.0),
    ],
)
def test_group_timeouts(
    raw: dict[str, Any], session: float, heartbeat: float, rebalance: float, max_poll: float
) -> None:
    broker = broker_section(raw)
    assert (broker.session_timeout, broker.heartbeat_interval) == (session, heartbeat)
    assert (broker.rebalance_timeout, broker.max_poll_interval) == (rebalance, max_poll)


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ({"session_timeout": "3s"}, {}, r"broker\.session_timeout: 3s is below 6s"),
        ({"session_timeout": "5.9s", "heartbeat_interval": "1s"}, {}, r"broker\.session_timeout"),
        # the worker's own environment says Kafka: the file's 3 s would be refused
        (
            {"embedded": True, "session_timeout": "3s", "heartbeat_interval": "1s"},
            {"MAILSTREAM_BROKER_EMBEDDED": "false"},
            r"broker\.session_timeout",
        ),
        ({"session_timeout": "9s", "heartbeat_interval": "9s"}, {}, r"broker\.heartbeat_interval"),
    ],
)
def test_timeouts_kafka_would_refuse_are_config_errors(
    raw: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        broker_section(raw, env)


def test_exactly_kafkas_least_session_timeout_is_accepted() -> None:
    assert (
        broker_section({"session_timeout": "6s", "heartbeat_interval": "2s"}).session_timeout == 6
    )


def test_every_topic_is_created_with_its_retention_or_compaction() -> None:
    config = parse_config(
        {"topics": {"retention": {"events": "10d", "sends": "36h"}, "min_insync_replicas": 2}},
        SOURCE,
        env={},
    )
    settings = topic_configs(config)
    assert set(settings) == set(config.topics.all_names())
    assert settings["mailstream.events"]["retention.ms"] == str(10 * DAY_MS)
    assert settings["mailstream.sends.marketing"]["retention.ms"] == str(36 * 3_600_000)
    assert settings["mailstream.sends.transactional"]["retention.ms"] == str(36 * 3_600_000)
    assert settings["mailstream.feedback"]["retention.ms"] == str(30 * DAY_MS)
    assert settings["mailstream.dlq"]["retention.ms"] == str(90 * DAY_MS)
    assert settings["mailstream.sessions"]["retention.ms"] == str(2 * DAY_MS)
    assert settings["mailstream.suppression"] == {
        "cleanup.policy": "compact",
        "min.insync.replicas": "2",
    }
    compacted = {n for n, s in settings.items() if s["cleanup.policy"] == "compact"}
    assert compacted == {"mailstream.suppression"}
    assert all(s["min.insync.replicas"] == "2" for s in settings.values())
    assert changelog_configs(config) == {"min.insync.replicas": "2"}


def test_unset_replication_and_min_insync_leave_them_to_the_broker() -> None:
    config = parse_config({}, SOURCE, env={})
    assert config.topics.replication is None
    assert changelog_configs(config) == {}
    assert all("min.insync.replicas" not in s for s in topic_configs(config).values())


@pytest.mark.parametrize(
    "retention",
    [{"sessions": "6h"}, {"events": "10m"}, {"dlq": 0}],
)
def test_a_retention_that_would_lose_what_is_still_needed_is_refused(
    retention: dict[str, Any],
) -> None:
    (key,) = retention
    with pytest.raises(ConfigError, match=rf"topics\.retention\.{key}"):
        parse_config({"topics": {"retention": retention}}, SOURCE, env={})


ALL_FOUR = [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("partitions", "policies", "problem"),
    [
        ({}, {}, None),  # nothing exists yet
        ({"mailstream.events": ALL_FOUR}, {"mailstream.suppression": "compact"}, None),
        # more partitions is not this check's business
        ({"mailstream.events": [*ALL_FOUR, 4]}, {"mailstream.suppression": "compact"}, None),
        (
            {"mailstream.events": [0, 1]},
            {"mailstream.suppression": "compact"},
            "topic mailstream.events has 2 partitions, fewer than topics.partitions (4)",
        ),
        (
            {"mailstream.suppression": ALL_FOUR},
            {"mailstream.suppression": "delete"},
            "topic mailstream.suppression has cleanup.policy=delete; the suppression list"
            " needs cleanup.policy=compact",
        ),
        (
            {"mailstream.suppression": ALL_FOUR},
            {"mailstream.suppression": "compact,delete"},
            "topic mailstream.suppression has cleanup.policy=compact,delete",
        ),
        (
            {"mailstream.events": ALL_FOUR},
            {"mailstream.events": "compact", "mailstream.suppression": "compact"},
            "topic mailstream.events has cleanup.policy=compact; it needs cleanup.policy=delete",
        ),
    ],
)
def test_existing_topics_that_would_lose_data(
    partitions: dict[str, list[int]], policies: dict[str, str], problem: str | None
) -> None:
    config = parse_config({}, SOURCE, env={})
    problems = topic_problems(config, partitions, policies)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem), problems
