"""Create mailstream's topics and list a topic's partitions, on any Kafka-compatible broker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.clients import start_client

logger = logging.getLogger(__name__)

# For topics where only the latest record per key matters (the suppression list).
COMPACTED = {"cleanup.policy": "compact"}


async def ensure_topics(
    bootstrap_servers: KafkaAccess | str,
    names: Iterable[str],
    partitions: int,
    replication: int = 1,
    timeout: float = 20.0,
    configs: dict[str, str] | None = None,
) -> None:
    """Create the topics that do not exist yet, then wait until all are visible.

    ``configs`` (e.g. ``{"cleanup.policy": "compact"}``) apply to the topics created here;
    a broker that rejects them gets the topics without."""
    wanted = list(dict.fromkeys(names))
    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(
            **KafkaAccess.plain(bootstrap_servers).client_kwargs(), request_timeout_ms=10_000
        )
        try:
            await start_client(admin)  # closed again when it fails: a fresh one next time
            break
        except Exception as exc:  # the broker may still be starting
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach the broker at {bootstrap_servers}: {exc}") from exc
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            rejected = await _create_topics(admin, missing, partitions, replication, configs)
            if rejected and configs:
                logger.warning(
                    "the broker rejected topic configs %s for %s (%s); creating them without",
                    configs,
                    ", ".join(rejected),
                    "; ".join(rejected.values()),
                )
                await _create_topics(admin, list(rejected), partitions, replication, None)
            logger.info("created topics %s with %d partitions", ", ".join(missing), partitions)
        while missing:
            existing = set(await admin.list_topics())
            missing = [n for n in wanted if n not in existing]
            if missing and time.monotonic() > deadline:
                raise BrokerError(f"topics {missing} were not created within {timeout:.0f}s")
            if missing:
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _create_topics(
    admin: AIOKafkaAdminClient,
    names: list[str],
    partitions: int,
    replication: int,
    configs: dict[str, str] | None,
) -> dict[str, str]:
    """Ask for the topics; return those the broker refused (other than as existing) and why."""
    response = await admin.create_topics(
        [
            NewTopic(
                n,
                num_partitions=partitions,
                replication_factor=replication,
                topic_configs=configs or {},
            )
            for n in names
        ]
    )
    refused: dict[str, str] = {}
    for topic, code, *rest in response.topic_errors:
        if code not in (0, TopicAlreadyExistsError.errno):
            message = rest[0] if rest and rest[0] else ""
            refused[topic] = f"error {code} {message}".strip()
    return refused


async def topic_partitions(bootstrap_servers: KafkaAccess | str, topic: str) -> list[int]:
    """The partition ids of ``topic``; empty when it does not exist (it is not created)."""
    admin = AIOKafkaAdminClient(
        **KafkaAccess.plain(bootstrap_servers).client_kwargs(), request_timeout_ms=10_000
    )
    await start_client(admin)
    try:
        # Metadata for all topics: asking for one by name may create it on some brokers.
        for described in await admin.describe_topics():
            if described["topic"] == topic and described["error_code"] == 0:
                return sorted(p["partition"] for p in described["partitions"])
        return []
    finally:
        await admin.close()


async def create_topics(config: Config, bootstrap_servers: KafkaAccess | str | None = None) -> None:
    """Every topic the config names; the suppression list's is compacted (latest per address)."""
    from mailstream.kafka.access import kafka_access

    servers = bootstrap_servers or kafka_access(config)
    topics = config.topics
    await ensure_topics(
        servers,
        [topics.suppression],
        topics.partitions,
        topics.replication,
        configs=COMPACTED,
    )
    await ensure_topics(servers, topics.all_names(), topics.partitions, topics.replication)
