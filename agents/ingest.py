"""The ingest agent: events in; dead letters out; user state folded in once per batch."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mailstream import metrics
from mailstream.app import app, config, dlq_topic, events_topic
from mailstream.backfill import Backfill
from mailstream.ingest import (
    DEAD_LETTERED,
    BatchResult,
    DeadLetter,
    IngestSettings,
    RawMessage,
    ingest_batch,
    plan_offsets,
)
from mailstream.storage import PROGRESS_KEY
from mailstream.users import UserState
from tables.users import users

logger = logging.getLogger(__name__)

settings = IngestSettings(
    max_event_bytes=config.ingest.max_event_bytes,
    default_tenant=config.ingest.default_tenant,
    dedup_window_s=config.ingest.dedup_window,
    dedup_max_ids=config.ingest.dedup_max_ids_per_user,
)
backfill = Backfill(config.bootstrap_servers, config.topics.events)


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


async def complete(messages: list[RawMessage]) -> tuple[list[RawMessage], int]:
    """The batch without replays, with any skipped offsets fetched and put in place."""
    progress = {p: users.progress(p) for p in {m.partition for m in messages}}
    plan = plan_offsets(messages, progress)
    if not plan.missing:
        return plan.fresh, plan.replayed
    fetched: list[RawMessage] = []
    for partition, ranges in plan.missing.items():
        for start, end in ranges:
            logger.warning(
                "the consumer skipped offsets %d..%d of partition %d: reading them directly",
                start,
                end - 1,
                partition,
            )
            fetched.extend(await backfill.fetch(partition, start, end))
    metrics.BACKFILLED.inc(len(fetched))
    merged = sorted(fetched + plan.fresh, key=lambda m: (m.partition, m.offset))
    again = plan_offsets(merged, progress)
    return again.fresh, plan.replayed


async def publish(result: BatchResult, next_offsets: dict[int, int]) -> None:
    """Send the batch's changelog records and dead letters; return once the broker has all.

    Each partition's progress record goes last, after the user records it vouches for.
    """
    producer = app.producer
    changelog = users.changelog_topic
    encoded: dict[int, dict[bytes, bytes]] = {p: {} for p in next_offsets}
    for (partition, key), state in result.changed.items():
        encoded.setdefault(partition, {})[key] = state.encode()
    for partition, nxt in next_offsets.items():
        encoded[partition][PROGRESS_KEY] = str(nxt).encode()
    pending: list[Any] = []
    for partition, items in encoded.items():
        for key, value in items.items():
            pending.append(await producer.send(changelog, key, value, partition, None, None))
    n_changelog = len(pending)
    dlq = dlq_topic.get_topic_name()
    for dl in result.dead_letters:
        msg = dl.message
        headers = dead_letter_headers(dl)
        pending.append(await producer.send(dlq, msg.key, msg.value, None, None, headers))
    acked = await asyncio.gather(*pending)
    last_offsets: dict[int, int] = {}
    for md in acked[:n_changelog]:
        last_offsets[md.partition] = max(md.offset, last_offsets.get(md.partition, -1))
    for partition, items in encoded.items():
        users.write(partition, items, last_offsets[partition])
    metrics.CHANGELOG_RECORDS.labels("users").inc(n_changelog)


def count(result: BatchResult, consumed: int, replayed: int) -> None:
    metrics.EVENTS_CONSUMED.inc(consumed)
    metrics.REPLAYED.inc(replayed)
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
        messages = [
            RawMessage(m.topic, m.partition, m.offset, m.key, m.value)
            for m in (event.message for event in batch)
        ]
        fresh, replayed = await complete(messages)
        result = ingest_batch(fresh, load_user, int(time.time() * 1000), settings)
        next_offsets: dict[int, int] = {}
        for m in fresh:
            next_offsets[m.partition] = m.offset + 1
        if fresh:
            await publish(result, next_offsets)
        for event in batch:
            await stream.ack(event)
        count(result, len(fresh), replayed)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)


@app.task
async def _close_backfill_on_stop() -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await backfill.close()
