"""Fetch ranges of offsets straight from Kafka, for messages the consumer skipped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from mailstream import metrics
from mailstream.ingest import RawMessage, plan_offsets

logger = logging.getLogger(__name__)


class Backfill:
    """A group-less consumer that reads exact offset ranges on demand.

    Faust skips (and acknowledges) messages that arrive while its flow control is
    paused around rebalances and recovery; without this, their offsets would be
    committed unprocessed.
    """

    def __init__(self, bootstrap_servers: str, topic: str, timeout: float = 15.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def fetch(
        self, partition: int, start: int, end: int | None = None, idle_ms: int = 150
    ) -> list[RawMessage]:
        """Messages with ``start <= offset < end`` (fewer if the log no longer has them).

        Without ``end``: up to the end of the partition, found by reading until a fetch
        comes back empty for ``idle_ms`` (the high-water mark the embedded broker reports
        can fall short of the last producer batch, so it is not trusted)."""
        consumer = await self._client()
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        found: list[RawMessage] = []
        deadline = time.monotonic() + self.timeout
        position = start
        while (end is None or position < end) and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=idle_ms if end is None else 500)
            for m in batch.get(tp, ()):
                position = m.offset + 1
                if m.offset >= start and (end is None or m.offset < end):
                    found.append(RawMessage(m.topic, m.partition, m.offset, m.key, m.value))
            if not batch:
                if end is None:
                    return found
                position = max(position, await consumer.position(tp))
        if end is not None and position < end:
            logger.error(
                "could not read offsets %d..%d of %s[%d] within %.0fs",
                start,
                end - 1,
                self.topic,
                partition,
                self.timeout,
            )
        return found

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def complete(
    messages: list[RawMessage], progress: Callable[[int], int | None], backfill: Backfill
) -> tuple[list[RawMessage], int]:
    """A batch of one topic without replays, with any skipped offsets fetched and put in
    place; and how many replays were dropped. ``progress(p)`` is partition p's next
    unapplied offset (None: never processed)."""
    known = {p: progress(p) for p in {m.partition for m in messages}}
    plan = plan_offsets(messages, known)
    if not plan.missing:
        return plan.fresh, plan.replayed
    fetched: list[RawMessage] = []
    for partition, ranges in plan.missing.items():
        for start, end in ranges:
            logger.warning(
                "the consumer skipped offsets %d..%d of %s[%d]: reading them directly",
                start,
                end - 1,
                backfill.topic,
                partition,
            )
            fetched.extend(await backfill.fetch(partition, start, end))
    metrics.BACKFILLED.inc(len(fetched))
    merged = sorted(fetched + plan.fresh, key=lambda m: (m.partition, m.offset))
    again = plan_offsets(merged, known)
    return again.fresh, plan.replayed


QUIET_SECONDS = 2.0


async def sweep_quiet_partitions(
    partitions: Iterable[int],
    last_seen: Mapping[tuple[str, int], float],
    progress: Callable[[int], int | None],
    backfill: Backfill,
    apply: Callable[[list[RawMessage]], Awaitable[None]],
    lock: asyncio.Lock,
) -> None:
    """Read back the tail of each quiet partition of ``backfill.topic`` that the consumer
    skipped, and apply it.

    A skipped message is found when a later one arrives; if the consumer skipped (and
    acknowledged) everything up to the end of a partition, nothing later arrives. So a
    partition quiet for a while is read from its next unapplied offset to its end. The
    read happens outside ``lock``; ``apply`` re-plans the batch against the progress
    records, so anything applied meanwhile is dropped as a replay.
    """
    now = time.monotonic()
    for partition in partitions:
        if now - last_seen.get((backfill.topic, partition), 0.0) < QUIET_SECONDS:
            continue
        start = progress(partition) or 0
        tail = await backfill.fetch(partition, start)
        if not tail:
            continue
        logger.warning(
            "%s[%d] is quiet at offset %d but holds messages up to %d: reading them",
            backfill.topic,
            partition,
            start,
            tail[-1].offset,
        )
        metrics.BACKFILLED.inc(len(tail))
        async with lock:
            await apply(tail)


async def consume_in_batches(
    stream: Any,
    apply: Callable[[list[RawMessage]], Awaitable[None]],
    lock: asyncio.Lock,
    last_seen: dict[tuple[str, int], float],
    size: int = 500,
    within: float = 0.05,
) -> None:
    """An agent's loop: take batches, apply each under ``lock``, and acknowledge it only
    after ``apply`` returns (its effects durable). Notes when each partition was last
    seen, for ``sweep_quiet_partitions``."""
    async for batch in stream.noack_take(size, within=within):
        messages = [
            RawMessage(m.topic, m.partition, m.offset, m.key, m.value)
            for m in (event.message for event in batch)
        ]
        seen_at = time.monotonic()
        for m in messages:
            last_seen[(m.topic, m.partition)] = seen_at
        async with lock:
            await apply(messages)
        for event in batch:
            await stream.ack(event)
