"""Create mailstream's topics with the settings they need, check the ones that exist, and
list a topic's partitions, on any Kafka-compatible broker.

What is checked where: on Apache Kafka and on the embedded broker alike, a missing topic
is created with its replication, ``min.insync.replicas``, retention and cleanup policy
(``topic_configs``), and a refused setting stops the worker naming the topic, the
setting and the broker's reason. Each existing topic's partitions (metadata) and cleanup
policy (DescribeConfigs) are checked at every start. The embedded broker answers
DescribeConfigs with the settings a topic was created with, so there a topic created
without a cleanup policy reads as ``delete``, Kafka's default; it keeps one replica
whatever is asked, and never refuses a setting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError, ConfigError
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.clients import start_client
from mailstream.kafka.embedded_quirks import EMBEDDED_CLUSTER_ID

logger = logging.getLogger(__name__)

# For topics where only the latest record per key matters (the suppression list).
COMPACTED = {"cleanup.policy": "compact"}
# The replication used when the broker does not say its default (the embedded broker).
FALLBACK_REPLICATION = 1


@asynccontextmanager
async def _admin(
    bootstrap_servers: KafkaAccess | str, timeout: float
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client; retries until ``timeout`` while the broker starts."""
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
        yield admin
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap_servers: KafkaAccess | str,
    names: Iterable[str],
    partitions: int,
    replication: int = 1,
    timeout: float = 20.0,
    configs: dict[str, str] | None = None,
    *,
    topic_configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create the topics that do not exist yet, then wait until all are visible.

    ``configs`` (e.g. ``{"cleanup.policy": "compact"}``) apply to every topic created
    here, and ``topic_configs`` to the topic each is keyed by, over them. A setting the
    broker refuses is a BrokerError naming the topic, the settings and the broker's
    reason: the topic is not created without it."""
    wanted = list(dict.fromkeys(names))
    async with _admin(bootstrap_servers, timeout) as admin:
        await _ensure(admin, wanted, partitions, replication, configs, topic_configs, timeout)


async def _ensure(
    admin: AIOKafkaAdminClient,
    wanted: list[str],
    partitions: int,
    replication: int,
    configs: Mapping[str, str] | None,
    topic_configs: Mapping[str, Mapping[str, str]] | None,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    settings = {n: {**(configs or {}), **(topic_configs or {}).get(n, {})} for n in wanted}
    existing = set(await admin.list_topics())
    missing = [n for n in wanted if n not in existing]
    if missing:
        refused = await _create_topics(admin, missing, partitions, replication, settings)
        if refused:
            raise BrokerError(
                "; ".join(
                    f"the broker refused topic {topic} with partitions={partitions},"
                    f" replication={replication}"
                    + "".join(f", {k}={v}" for k, v in settings[topic].items())
                    + f": {why}"
                    for topic, why in refused.items()
                )
            )
        logger.info("created topics %s with %d partitions", ", ".join(missing), partitions)
    while missing:
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing and time.monotonic() > deadline:
            raise BrokerError(f"topics {missing} were not created within {timeout:.0f}s")
        if missing:
            await asyncio.sleep(0.1)


async def _create_topics(
    admin: AIOKafkaAdminClient,
    names: list[str],
    partitions: int,
    replication: int,
    settings: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """Ask for the topics; return those the broker refused (other than as existing) and why."""
    response = await admin.create_topics(
        [
            NewTopic(
                n,
                num_partitions=partitions,
                replication_factor=replication,
                topic_configs=dict(settings.get(n, {})),
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


async def broker_default_replication(bootstrap_servers: KafkaAccess | str) -> int | None:
    """The brokers' ``default.replication.factor``; None when they do not say."""
    async with _admin(bootstrap_servers, 20.0) as admin:
        return await _broker_default_replication(admin)


async def topic_partitions(bootstrap_servers: KafkaAccess | str, topic: str) -> list[int]:
    """The partition ids of ``topic``; empty when it does not exist (it is not created)."""
    admin = AIOKafkaAdminClient(
        **KafkaAccess.plain(bootstrap_servers).client_kwargs(), request_timeout_ms=10_000
    )
    await start_client(admin)
    try:
        return (await _partition_counts(admin)).get(topic, [])
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, list[int]]:
    # Metadata for all topics: asking for one by name may create it on some brokers.
    return {
        described["topic"]: sorted(p["partition"] for p in described["partitions"])
        for described in await admin.describe_topics()
        if described["error_code"] == 0
    }


def _retention_ms(seconds: float) -> str:
    return str(round(seconds * 1000))


def topic_configs(config: Config) -> dict[str, dict[str, str]]:
    """Topic name -> the settings mailstream creates it with: a retention for every
    topic of records read once (a compacted one would drop all but the last record of a
    user), compaction for the suppression list (the latest entry of every address, for
    good), and ``topics.min_insync_replicas`` when set."""
    topics, kept = config.topics, config.topics.retention

    def delete(seconds: float) -> dict[str, str]:
        return {"cleanup.policy": "delete", "retention.ms": _retention_ms(seconds)}

    settings = {
        topics.events: delete(kept.events),
        topics.sends_transactional: delete(kept.sends),
        topics.sends_marketing: delete(kept.sends),
        topics.feedback: delete(kept.feedback),
        topics.dlq: delete(kept.dlq),
        topics.webhooks: delete(kept.webhooks),
        topics.feedback_claims: delete(kept.feedback_claims),
        topics.sessions: delete(kept.sessions),
        topics.suppression: dict(COMPACTED),
    }
    return {name: {**s, **changelog_configs(config)} for name, s in settings.items()}


def changelog_configs(config: Config) -> dict[str, str]:
    """What the tables' changelog topics get beyond Faust's compaction: the configured
    ``min.insync.replicas`` (their replication is Faust's ``topic_replication_factor``)."""
    insync = config.topics.min_insync_replicas
    return {} if insync is None else {"min.insync.replicas": str(insync)}


async def _broker_default_replication(admin: AIOKafkaAdminClient) -> int | None:
    """The broker's ``default.replication.factor``; None when it does not say (aiokafka
    0.14 speaks CreateTopics v3, which cannot ask for the broker's default with -1). The
    embedded broker keeps one replica whatever is asked: 1 there."""
    try:
        cluster = await admin.describe_cluster()
        if cluster.get("cluster_id") == EMBEDDED_CLUSTER_ID:
            return 1
        node = str(cluster["controller_id"] if cluster["controller_id"] >= 0 else "")
        node = node or str(cluster["brokers"][0]["node_id"])
        resource = ConfigResource(ConfigResourceType.BROKER, node)  # every setting: see below
        responses = await admin.describe_configs([resource])
        for response in responses:
            for error, _msg, _type, _name, entries in response.resources:
                for entry in entries if error == 0 else ():
                    if entry[0] == "default.replication.factor" and entry[1]:
                        return int(entry[1])
    except Exception as exc:  # a broker without DescribeConfigs for brokers
        logger.info("the broker did not say its default.replication.factor (%s)", exc)
    return None


async def _cleanup_policies(
    admin: AIOKafkaAdminClient, names: list[str], timeout: float = 10.0
) -> dict[str, str]:
    """Topic -> its cleanup.policy; ``delete`` (Kafka's default) when the broker does not
    list it (the embedded broker lists only the settings a topic was created with)."""
    # Every setting of each topic: the embedded broker drops the connection when the
    # request names the settings it wants.
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    deadline = time.monotonic() + timeout
    while True:
        policies = dict.fromkeys(names, "delete")
        failed: dict[str, str] = {}
        for response in await admin.describe_configs(resources):
            for error, message, _type, name, entries in response.resources:
                if error != 0:
                    failed[name] = f"error {error} {message or ''}".rstrip()
                for entry in entries:
                    if entry[0] == "cleanup.policy" and entry[1]:
                        policies[name] = entry[1]
        if not failed:
            return policies
        # A topic just created is not yet known to every broker (unknown topic, 3).
        if time.monotonic() > deadline:
            name, why = next(iter(failed.items()))
            raise BrokerError(
                f"cannot read the settings of topic {name} (DescribeConfigs {why}): the"
                " worker needs DescribeConfigs on its topics"
            )
        await asyncio.sleep(0.2)


def topic_problems(
    config: Config, partitions: Mapping[str, list[int]], policies: Mapping[str, str]
) -> list[str]:
    """What is wrong with the existing topics for this config: too few partitions, or a
    cleanup policy that loses data (compaction on a topic of records read once; none on
    the suppression list)."""
    problems = []
    wanted = config.topics.partitions
    for name, settings in topic_configs(config).items():
        if name not in partitions:
            continue  # created with its settings once it is needed
        have = len(partitions[name])
        if have < wanted:
            problems.append(
                f"topic {name} has {have} partitions, fewer than topics.partitions"
                f" ({wanted}): set topics.partitions to {have}, or give the topic"
                f" {wanted} partitions before any worker has read it"
            )
        policy = {p.strip() for p in policies.get(name, "delete").split(",")}
        if settings["cleanup.policy"] == "compact" and policy != {"compact"}:
            problems.append(
                f"topic {name} has cleanup.policy={','.join(sorted(policy))}; the suppression"
                " list needs cleanup.policy=compact (else suppressed addresses are forgotten):"
                " alter the topic's config"
            )
        elif settings["cleanup.policy"] == "delete" and "compact" in policy:
            problems.append(
                f"topic {name} has cleanup.policy={','.join(sorted(policy))}; it needs"
                " cleanup.policy=delete (compaction drops all but a key's latest record):"
                " alter the topic's config"
            )
    return problems


async def create_topics(
    config: Config, bootstrap_servers: KafkaAccess | str | None = None
) -> Config:
    """Every topic the config names, created with ``topic_configs`` where missing and
    checked where it exists: a problem is an error naming the topic and the setting.
    Returns the config with ``topics.replication`` resolved (the broker's default when
    unset), as Faust's changelog topics must get it too."""
    from mailstream.kafka.access import kafka_access

    servers = bootstrap_servers or kafka_access(config)
    topics = config.topics
    settings = topic_configs(config)
    async with _admin(servers, 20.0) as admin:
        replication = topics.replication
        if replication is None:
            replication = await _broker_default_replication(admin)
        if replication is None and not config.broker.embedded:
            # guessing 1 would leave every topic one broker away from data loss
            raise ConfigError(
                "topics.replication: the broker did not say its default.replication.factor"
                " (reading it needs DescribeConfigs on the cluster): set topics.replication"
            )
        replication = replication or FALLBACK_REPLICATION
        insync = topics.min_insync_replicas
        if insync is not None and insync > replication:
            raise ConfigError(
                f"topics.min_insync_replicas: {insync} is more than the topics' replication"
                f" ({replication}, topics.replication or the broker's default): no write"
                " with acks=all could ever succeed"
            )
        names = list(settings)
        await _ensure(admin, names, topics.partitions, replication, None, settings, 20.0)
        counts = await _partition_counts(admin)
        problems = topic_problems(config, counts, await _cleanup_policies(admin, names))
    if problems:
        raise BrokerError("; ".join(problems))
    if replication == topics.replication:
        return config
    # model_copy keeps the tenants' configs (private attributes) with the rest
    return config.model_copy(
        update={"topics": topics.model_copy(update={"replication": replication})}
    )
