"""The ingest agent: events in; dead letters out; user state folded in once per batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from mailstream import metrics
from mailstream.app import app, config, dlq_topic, events_topic
from mailstream.ingest import (
    DEAD_LETTERED,
    BatchResult,
    DeadLetter,
    IngestSettings,
    RawMessage,
    ingest_batch,
)
from mailstream.users import UserState
from tables.users import users

logger = logging.getLogger(__name__)

settings = IngestSettings(
    max_event_bytes=config.ingest.max_event_bytes,
    default_tenant=config.ingest.default_tenant,
    dedup_window_s=config.ingest.dedup_window,
    dedup_max_ids=config.ingest.dedup_max_ids_per_user,
)


def load_user(partition: int, key: bytes) -> UserState | None:
    raw = users.get(partition, key)
    return None if raw is None else UserState.decode(raw)


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    msg = dl.message
    return [
        ("mailstream.reason", dl.reason.encode()),
        ("mailstream.reason_code", dl.code.encode()),
        ("mailstream.source.topic", msg.topic.encode()),
        ("mailstream.source.partition", str(msg.partition).encode()),
        ("mailstream.source.offset", str(msg.offset).encode()),
    ]


async def publish(result: BatchResult) -> dict[int, dict[bytes, bytes]]:
    """Send the batch's changelog records and dead letters; return once the broker has all."""
    producer = app.producer
    changelog = users.changelog_topic
    encoded: dict[int, dict[bytes, bytes]] = {}
    pending: list[Any] = []
    for (partition, key), state in result.changed.items():
        value = state.encode()
        encoded.setdefault(partition, {})[key] = value
        pending.append(await producer.send(changelog, key, value, partition, None, None))
    for dl in result.dead_letters:
        msg = dl.message
        pending.append(
            await producer.send(dlq_topic.get_topic_name(), msg.key, msg.value, None, None,
                                dead_letter_headers(dl))
        )
    acked = await asyncio.gather(*pending)
    last_offsets: dict[int, int] = {}
    for md in acked[: len(result.changed)]:
        last_offsets[md.partition] = max(md.offset, last_offsets.get(md.partition, -1))
    for partition, items in encoded.items():
        users.write(partition, items, last_offsets[partition])
    metrics.CHANGELOG_RECORDS.labels("users").inc(len(result.changed))
    return encoded


def count(result: BatchResult, consumed: int) -> None:
    metrics.EVENTS_CONSUMED.inc(consumed)
    for (outcome, label), n in result.outcomes.items():
        if outcome == DEAD_LETTERED:
            metrics.DEAD_LETTERS.labels(label).inc(n)
            metrics.EVENT_OUTCOMES.labels(outcome, "invalid").inc(n)
        else:
            metrics.EVENT_OUTCOMES.labels(outcome, metrics.event_type_label(label)).inc(n)


@app.agent(events_topic, name="mailstream.ingest")
async def ingest(stream: Any) -> None:
    """Process events in batches; acknowledge each batch only after its state is durable."""
    async for batch in stream.noack_take(
        config.ingest.batch_size, within=config.ingest.batch_within
    ):
        started = time.perf_counter()
        events: Sequence[Any] = batch
        messages = [
            RawMessage(m.topic, m.partition, m.offset, m.key, m.value)
            for m in (event.message for event in events)
        ]
        result = ingest_batch(messages, load_user, int(time.time() * 1000), settings)
        await publish(result)
        for event in events:
            await stream.ack(event)
        count(result, len(messages))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
