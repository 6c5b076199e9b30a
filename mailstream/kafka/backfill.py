"""Fetch ranges of offsets straight from Kafka, for messages the consumer skipped."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.clients import start_client
from mailstream.kafka.embedded_quirks import reads_until_empty
from mailstream.kafka.records import RawMessage, headers_of, plan_offsets
from mailstream.observability import metrics
from mailstream.state.staged_flush import Outbox
from mailstream.state.store import Store, progress_key

logger = logging.getLogger(__name__)


class Backfill:
    """A group-less consumer that reads exact offset ranges on demand.

    Faust skips (and acknowledges) messages that arrive while its flow control is
    paused around rebalances and recovery; without this, their offsets would be
    committed unprocessed.
    """

    def __init__(
        self,
        bootstrap_servers: KafkaAccess | str,
        topic: str,
        timeout: float = 15.0,
        until_empty: bool | None = None,
    ) -> None:
        """``until_empty``: whether a read to the end of a partition goes on until a fetch
        comes back empty rather than stop at the listed end offset; None: as the broker
        this process runs against needs (mailstream.kafka.embedded_quirks)."""
        self.access = KafkaAccess.plain(bootstrap_servers)
        self.topic = topic
        self.timeout = timeout
        self.until_empty = until_empty
        self._consumer: AIOKafkaConsumer | None = None

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self.access.client_kwargs(),
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
            )
            await start_client(consumer)
            self._consumer = consumer
        return self._consumer

    async def fetch(
        self, partition: int, start: int, end: int | None = None, idle_ms: int = 150
    ) -> list[RawMessage]:
        """Messages with ``start <= offset < end`` (fewer if the log no longer has them).

        Without ``end``: up to the end of the partition, the end offset the broker lists;
        on the embedded broker, whose listed end can fall short of the last producer
        batch, found by reading until a fetch comes back empty for ``idle_ms``."""
        consumer = await self._client()
        tp = TopicPartition(self.topic, partition)
        until_empty = self.until_empty
        if until_empty is None:
            until_empty = reads_until_empty()
        if end is None and not until_empty:
            end = (await consumer.end_offsets([tp]))[tp]
            if end <= start:
                return []
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
                    found.append(
                        RawMessage(
                            m.topic, m.partition, m.offset, m.key, m.value, headers_of(m.headers)
                        )
                    )
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
        try:
            tail = await backfill.fetch(partition, start)
        except KafkaError as exc:
            # The broker is away: the next sweep reads what this one could not
            # (mailstream.kafka.broker_watch says so, and stops the worker if it stays away).
            logger.debug("%s: cannot read back quiet partitions: %r", backfill.topic, exc)
            return
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


# The batch wait of an agent whose topic a direct reader reads
# (mailstream.kafka.direct_reader): Faust keeps its partitions paused, so its stream brings
# at most what was fetched before the pause, which the reader applies too (from the progress
# records; whichever comes second is skipped). A short wait would only wake the take loop
# 100 times a second for nothing.
PAUSED_WITHIN = 1.0


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
            RawMessage(m.topic, m.partition, m.offset, m.key, m.value, headers_of(m.headers))
            for m in (event.message for event in batch)
        ]
        seen_at = time.monotonic()
        for m in messages:
            last_seen[(m.topic, m.partition)] = seen_at
        async with lock:
            await apply(messages)
        for event in batch:
            await stream.ack(event)


class Intake:
    """What an agent that consumes topics into a table needs besides its own logic: the
    progress record of each topic in that table, a Backfill per topic for the offsets the
    consumer skipped, the lock its batches take, and when each partition was last seen
    (for the sweep of quiet tails)."""

    def __init__(
        self,
        store: Store,
        topics: Iterable[str] | Mapping[str, bytes],
        bootstrap_servers: KafkaAccess | str,
        lock: asyncio.Lock | None = None,
    ) -> None:
        """``topics``: names (each keeps its progress under ``progress_key(topic)``), or
        name -> progress key."""
        self.store = store
        self.keys = (
            dict(topics)
            if isinstance(topics, Mapping)
            else {topic: progress_key(topic) for topic in topics}
        )
        self.backfills = {topic: Backfill(bootstrap_servers, topic) for topic in self.keys}
        self.lock = lock or asyncio.Lock()
        self.last_seen: dict[tuple[str, int], float] = {}

    def progress(self, topic: str) -> Callable[[int], int | None]:
        return functools.partial(self.store.progress, key=self.keys[topic])

    async def fresh(self, messages: list[RawMessage], topic: str) -> list[RawMessage]:
        """The messages of ``topic`` not applied yet, with skipped offsets read back in
        place; replays are dropped and counted."""
        mine = [m for m in messages if m.topic == topic]
        if not mine:
            return []
        fresh, replayed = await complete(mine, self.progress(topic), self.backfills[topic])
        metrics.REPLAYED.inc(replayed)
        return fresh

    def put_progress(self, outbox: Outbox, fresh: list[RawMessage], topic: str) -> None:
        """Each partition's progress record for ``topic``, after the batch's other writes."""
        outbox.put_progress(self.store, fresh, self.keys[topic])

    async def consume(
        self, stream: Any, apply: Callable[[list[RawMessage]], Awaitable[None]], **batch: Any
    ) -> None:
        """The agent's loop (``consume_in_batches``), under this intake's lock."""
        await consume_in_batches(stream, apply, self.lock, self.last_seen, **batch)

    async def sweep(self, apply: Callable[[list[RawMessage]], Awaitable[None]]) -> None:
        """Read back and apply the skipped tails of quiet partitions, topic by topic
        (``sweep_quiet_partitions``); call on a settled worker."""
        partitions = self.store.active_partitions()
        for topic in self.keys:
            await sweep_quiet_partitions(
                partitions,
                self.last_seen,
                self.progress(topic),
                self.backfills[topic],
                apply,
                self.lock,
            )

    async def close(self) -> None:
        for backfill in self.backfills.values():
            await backfill.close()
