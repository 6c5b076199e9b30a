"""Table recovery on the embedded broker reads each changelog partition to its end: the
end offsets it uses come from a fetch, as ListOffsets answers them short on tansu."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from mailstream.exceptions import BrokerError
from mailstream.kafka.embedded_broker import EmbeddedBroker
from mailstream.kafka.embedded_quirks import fetched_end_offsets
from mailstream.kafka.topics import ensure_topics


async def test_fetched_end_offsets_count_every_record_of_a_many_record_last_batch(
    broker: EmbeddedBroker,
) -> None:
    topic = f"ends-{secrets.token_hex(4)}"
    await ensure_topics(broker.bootstrap_servers, [topic], 3)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=50)
    await producer.start()
    try:
        # partition 0: batches of 4 and 40 records; partition 1: one record; 2: none
        for n in (4, 40):
            await asyncio.gather(*[await producer.send(topic, b"v", partition=0) for _ in range(n)])
        await (await producer.send(topic, b"v", partition=1))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
    await consumer.start()
    try:
        listed = await consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
    finally:
        await consumer.stop()

    ends = await fetched_end_offsets(
        broker.bootstrap_servers, {TP(tp.topic, tp.partition): end for tp, end in listed.items()}
    )
    assert ends == {TP(topic, 0): 44, TP(topic, 1): 1, TP(topic, 2): 0}


async def test_an_end_offset_no_fetch_reports_stops_recovery_loudly(
    broker: EmbeddedBroker,
) -> None:
    # A partition without a leader (here: one the topic does not have) never answers a
    # fetch; recovering to its ListOffsets answer could lose records, so it raises.
    topic = f"ends-{secrets.token_hex(4)}"
    await ensure_topics(broker.bootstrap_servers, [topic], 1)
    started = time.monotonic()
    with pytest.raises(BrokerError, match=rf"{topic}\[3\]"):
        await fetched_end_offsets(
            broker.bootstrap_servers, {TP(topic, 0): 0, TP(topic, 3): 7}, timeout=2.0
        )
    assert time.monotonic() - started < 15  # within its timeout, not a client's default
