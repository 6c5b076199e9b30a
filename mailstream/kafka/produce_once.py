"""Write a few keyed records from a command (``mailstream suppress``): topics created and
checked as a worker does, each record on its key's partition, acknowledged by every
in-sync replica before it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError
from mailstream.kafka.access import kafka_access
from mailstream.kafka.clients import start_client
from mailstream.kafka.embedded_quirks import idempotence_supported
from mailstream.kafka.partitioning import keyed_partition
from mailstream.kafka.topics import create_topics


async def produce_keyed(
    config: Config, topic: str, records: Sequence[tuple[bytes, bytes | None]]
) -> int:
    """Write ``records`` (key, value; None: a tombstone) to ``topic``; returns how many,
    once the broker has them all."""
    access = kafka_access(config)
    # created (and checked) as a worker does, so no other way in makes them wrong
    await create_topics(config, access)
    # the embedded broker lacks InitProducerId, which idempotence needs
    idempotent = not config.broker.embedded and await idempotence_supported(access)
    producer = AIOKafkaProducer(
        **access.client_kwargs(), acks="all", enable_idempotence=idempotent, linger_ms=5
    )
    try:
        await start_client(producer)
    except Exception as exc:
        raise BrokerError(f"cannot reach the broker at {config.bootstrap_servers}: {exc}") from exc
    try:
        # Every record of a key in one partition: its readers (and compaction) see them in order.
        pending = [
            await producer.send(
                topic, value, key=key, partition=await keyed_partition(producer, topic, key)
            )
            for key, value in records
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(records)
