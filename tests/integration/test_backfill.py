"""Reading back a partition's tail (the sweep of quiet partitions): every record from the
next unapplied offset to the end, however the broker reports that end."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from aiokafka import AIOKafkaProducer

from mailstream.config.load import parse_config
from mailstream.kafka import embedded_quirks
from mailstream.kafka.backfill import Backfill
from mailstream.kafka.embedded_broker import EmbeddedBroker
from mailstream.kafka.topics import ensure_topics


async def _topic_with(broker: EmbeddedBroker, batches: list[int]) -> str:
    """A one-partition topic holding record batches of these sizes, values 0, 1, 2..."""
    topic = f"backfill-{secrets.token_hex(4)}"
    await ensure_topics(broker.bootstrap_servers, [topic], 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=50)
    await producer.start()
    try:
        n = 0
        for size in batches:
            values = [str(n + i).encode() for i in range(size)]
            await asyncio.gather(*[await producer.send(topic, v, partition=0) for v in values])
            n += size
    finally:
        await producer.stop()
    return topic


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put back, after the test, what ``embedded_quirks.install`` switches for the process."""
    monkeypatch.setattr(embedded_quirks, "_reads_until_empty", embedded_quirks.reads_until_empty())


async def test_the_tail_is_read_whole_when_the_last_batch_holds_many_records(
    broker: EmbeddedBroker,
) -> None:
    # The embedded broker lists the end of this partition as 5 (the last batch's base
    # offset + 1): reading until a fetch comes back empty still finds all 44.
    topic = await _topic_with(broker, [4, 40])
    backfill = Backfill(broker.bootstrap_servers, topic, until_empty=True)
    try:
        tail = await backfill.fetch(0, 2)
    finally:
        await backfill.close()
    assert [m.offset for m in tail] == list(range(2, 44))
    assert [m.value for m in tail] == [str(n).encode() for n in range(2, 44)]


async def test_on_apache_kafka_the_tail_ends_at_the_listed_end_without_an_idle_wait(
    broker: EmbeddedBroker, installed: None
) -> None:
    # One record per batch, so the embedded broker lists the right end, as Kafka does.
    topic = await _topic_with(broker, [1] * 6)
    embedded_quirks.install(parse_config({"broker": {"embedded": False}}, env={}))
    assert not embedded_quirks.reads_until_empty()
    backfill = Backfill(broker.bootstrap_servers, topic)
    try:
        started = time.monotonic()
        tail = await backfill.fetch(0, 1, idle_ms=10_000)
        at_end = await backfill.fetch(0, 6, idle_ms=10_000)
        took = time.monotonic() - started
    finally:
        await backfill.close()
    assert [m.value for m in tail] == [str(n).encode() for n in range(1, 6)]
    assert at_end == []
    # reading until an empty fetch would have waited idle_ms (10 s) twice
    assert took < 5.0
