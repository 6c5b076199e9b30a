"""Reading a topic straight from Kafka, for the partitions this worker owns.

Faust's stream path costs about as much per event as everything mailstream does with
it (each message is handed from the consumer thread to the event loop, wrapped in an
Event, queued per stream, tracked for acknowledgement and reported to every sensor).
The ingest agent works in batches and keeps its own durable position (the progress
record written with each batch), so it needs none of that; nor does the delivery agent
for its send commands. The ``DirectReader`` is a group-less consumer on the event loop
that reads each owned partition of its topics from its progress record in batches,
while Faust keeps the partitions assigned (so tables and topics stay co-partitioned) but
pauses fetching them.

Progress is the consumer position, the next offset to read, not the last record's offset
+ 1: Kafka hands a consumer no record at a transaction marker, in an aborted transaction
or where compaction or retention removed records, and the reader never takes such a gap
for skipped records. It reads ``read_committed`` (an aborted transaction is never
applied; an open one waits for its commit), and when its position moves past such a gap
with no record to apply (a quiet partition whose last offset is a commit marker), it hands
the new positions to ``advance``, which stores them, so the lag reaches 0.

Ownership comes from Faust's group: the reader only applies a batch while the worker
is settled and the batch was read under the current assignment (``epoch``). A
rebalance bumps the epoch under the state lock, so a batch in flight finishes (its
effects durable) before the partitions move, and one read before the rebalance is
dropped and read again from the progress records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from mailstream.exceptions import Fenced
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.clients import start_client
from mailstream.kafka.records import RawMessage, headers_of

logger = logging.getLogger(__name__)


# topic, partition -> the partition's next unapplied offset (None: none applied yet)
Progress = Callable[[str, int], int | None]
# (topic, partition) -> the consumer position to store, where no record is left to apply
Positions = dict[tuple[str, int], int]


class DirectReader:
    def __init__(
        self,
        bootstrap_servers: KafkaAccess | str,
        topics: Sequence[str],
        batch_size: int,
        within: float,
        fetch_max_wait: float | None = None,
    ) -> None:
        self.access = KafkaAccess.plain(bootstrap_servers)
        self.topics = tuple(topics)
        self.batch_size = batch_size
        self.within_ms = max(1, int(within * 1000))
        self.fetch_max_wait_ms = int((fetch_max_wait if fetch_max_wait is not None else 0.5) * 1000)
        # bumped by every rebalance: a batch read under an older epoch is not applied
        self.epoch = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned: tuple[int, ...] = ()
        self._assigned_epoch = -1
        self._fetch: asyncio.Future[Any] | None = None  # a getmany in progress
        # messages offered (mailstream.state.staged_flush hands over what this worker wrote),
        # waiting
        self._offered: list[RawMessage] = []
        self._offers = asyncio.Event()
        # (topic, partition) -> the offset after the last message this reader applied,
        # and after the last one offered (since the partition was assigned)
        self._applied: dict[tuple[str, int], int] = {}
        self._offered_next: dict[tuple[str, int], int] = {}
        # messages a fetch brought that had been taken already (offered, or applied):
        # kept near zero by moving the consumer past what is offered
        self.fetched_again = 0
        # (topic, partition) -> the consumer's position when the last batch was taken
        self._positions: Positions = {}
        self._tps: list[TopicPartition] = []

    def invalidate(self) -> None:
        """The assignment changed (or is about to): re-read positions before the next batch.
        A reader waiting for messages stops waiting, rather than see the change only when
        its wait (``within``) runs out."""
        self.epoch += 1
        self._offers.set()

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self.access.client_kwargs(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                max_partition_fetch_bytes=1 << 20,
                isolation_level="read_committed",
            )
            await start_client(consumer)
            self._consumer = consumer
        return self._consumer

    async def _assign(self, partitions: Iterable[int], progress: Progress) -> None:
        """Read ``partitions`` of each topic from each one's next unapplied offset."""
        consumer = await self._client()
        await self._drop_fetch()
        owned = tuple(sorted(partitions))
        tps = [TopicPartition(topic, p) for topic in self.topics for p in owned]
        consumer.assign(tps)
        self._offered.clear()
        self._offered_next.clear()
        self._applied.clear()
        self._positions.clear()
        self._tps = tps
        for tp in tps:
            start = progress(tp.topic, tp.partition)
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
                # what was applied before, as far as an offer's follow-on check goes
                self._applied[(tp.topic, tp.partition)] = start
        if owned != self._assigned:
            logger.info("reading %s partitions %s directly", ", ".join(self.topics), list(owned))
        self._assigned = owned

    def _taken(self, tp: tuple[str, int]) -> int:
        """The offset after what this reader has applied or been offered in ``tp``,
        whichever is further (-1: neither, since the partition was assigned)."""
        return max(self._offered_next.get(tp, -1), self._applied.get(tp, -1))

    def offer(
        self,
        messages: Iterable[RawMessage],
        since: Mapping[tuple[str, int, int], int] | None = None,
    ) -> None:
        """Messages this worker has just written to the reader's topics, acknowledged by
        the broker: those that follow on from what this reader has applied in a partition
        it owns are applied without waiting for a fetch to bring them, and the consumer
        moves past them, so that no fetch brings them again (one already under way may:
        those are skipped). The others are fetched as usual. ``since``: (topic,
        partition, offset) -> the offset a message follows on from, where the offsets
        between hold only transaction markers (mailstream.state.staged_flush.Written)."""
        if self._assigned_epoch != self.epoch:
            return
        moved: dict[tuple[str, int], int] = {}
        for m in sorted(messages, key=_position):
            tp = (m.topic, m.partition)
            # Only right after what this reader has applied or been offered, whichever is
            # further: a message before it may not be read yet, and the progress record
            # must not pass it.
            # (or after offsets that hold nothing to read: ``since``, a transaction marker)
            start = m.offset if since is None else since.get((*tp, m.offset), m.offset)
            if start <= self._taken(tp) <= m.offset:
                self._offered.append(m)
                self._offered_next[tp] = moved[tp] = m.offset + 1
                self._offers.set()
        if moved and self._consumer is not None:
            # Fetching them again would cost the broker and this worker a second read of
            # every command the worker writes (the send topics' records are the largest).
            for (topic, partition), offset in moved.items():
                self._consumer.seek(TopicPartition(topic, partition), offset)

    async def _drop_fetch(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._fetch
            self._fetch = None

    async def _next(self, consumer: AIOKafkaConsumer) -> list[RawMessage]:
        """The messages offered since the last batch and those of a finished fetch, in
        order without repeats; waits for one or the other (empty: neither came within
        ``within``)."""
        if self._fetch is None:  # kept across offers: a fetch is never cut short
            self._fetch = asyncio.ensure_future(
                consumer.getmany(timeout_ms=self.within_ms, max_records=self.batch_size)
            )
        if not self._offered:
            self._offers.clear()
            offered = asyncio.ensure_future(self._offers.wait())
            try:
                await asyncio.wait((self._fetch, offered), return_when=asyncio.FIRST_COMPLETED)
            finally:
                offered.cancel()
        messages, self._offered = self._offered, []
        if self._fetch.done():
            # Taken together with the offers, not after them: while this worker writes
            # steadily there are offers at every turn, and a partition that only the
            # fetch serves (its offers do not follow on) would wait for a quiet moment.
            batch, self._fetch = self._fetch.result(), None
            for tp, records in batch.items():
                if not records:
                    continue
                taken = self._taken((tp.topic, tp.partition))
                if records[0].offset < taken:  # records come in offset order
                    self.fetched_again += sum(1 for m in records if m.offset < taken)
                messages.extend(
                    RawMessage(
                        m.topic, m.partition, m.offset, m.key, m.value, headers_of(m.headers)
                    )
                    for m in records
                )
        # Read with the batch, with no wait in between: everything below a position was
        # handed out (in this batch or before) or is no record (markers, aborted, compacted).
        # Only where the position is known (seeked to a progress record, or fetched at):
        # a partition still waiting for its first offset reset would block the reader.
        for tp in self._tps:
            if (tp.topic, tp.partition) in self._applied or consumer.highwater(tp) is not None:
                self._positions[(tp.topic, tp.partition)] = await consumer.position(tp)
        return _in_order(messages)

    async def run(
        self,
        owned: Callable[[], list[int]],
        progress: Progress,
        settled: Callable[[], bool],
        apply: Callable[[list[RawMessage]], Awaitable[None]],
        lock: asyncio.Lock,
        on_assign: Callable[[list[int]], None] = lambda partitions: None,
        advance: Callable[[Positions], Awaitable[None]] | None = None,
    ) -> None:
        """Forever: read a batch of the owned partitions and apply it under ``lock``.

        ``owned()`` lists the partitions this worker owns, ``progress(topic, p)`` is that
        partition's next unapplied offset (None: none applied yet), ``settled()`` says the
        worker's view of its partitions is complete, and ``on_assign`` is told each new
        assignment (to pause Faust's own fetching of them). ``advance`` is given the
        positions of the partitions that moved past their last applied record with no record
        to apply, to store them (under ``lock``; None: not stored)."""
        while True:
            if not settled():
                await asyncio.sleep(0.05)
                continue
            if self._assigned_epoch != self.epoch:
                epoch = self.epoch
                partitions = owned()
                on_assign(partitions)
                await self._assign(partitions, progress)
                self._assigned_epoch = epoch
            if not self._assigned:
                await asyncio.sleep(0.2)
                continue
            epoch = self.epoch
            read = await self._next(await self._client())
            applied = self._applied
            # offered before, and fetched now: already applied
            messages = [m for m in read if m.offset >= applied.get((m.topic, m.partition), 0)]
            moved = self._moved(messages) if advance is not None else {}
            if not messages and not moved:
                continue
            async with lock:
                if self._assigned_epoch != self.epoch or epoch != self.epoch or not settled():
                    continue  # read under an older assignment: read again from progress
                try:
                    if messages:
                        await apply(messages)
                        for m in messages:
                            applied[(m.topic, m.partition)] = m.offset + 1
                    if moved and advance is not None:
                        await advance(moved)
                        applied.update(moved)
                except Fenced as exc:
                    # A partition of the batch is another worker's now (exactly_once):
                    # its part did not commit, the others did; read again from progress
                    # once the group has said who owns what.
                    logger.info("a batch of %s left to its new owner: %s", self.topics, exc)
                    self.invalidate()
                else:
                    continue
            await asyncio.sleep(0.2)  # the group's word on it comes first

    def _moved(self, messages: list[RawMessage]) -> Positions:
        """The positions past the last applied record of the partitions this batch brings
        nothing for (one that brings records stores their progress first)."""
        brought = {(m.topic, m.partition) for m in messages}
        return {
            tp: position
            for tp, position in self._positions.items()
            if tp not in brought and position > self._applied.get(tp, 0)
        }

    async def close(self) -> None:
        await self._drop_fetch()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def _position(m: RawMessage) -> tuple[str, int, int]:
    return (m.topic, m.partition, m.offset)


def _in_order(messages: list[RawMessage]) -> list[RawMessage]:
    """``messages`` by position, each position once (one offered and also fetched)."""
    ordered: list[RawMessage] = []
    for m in sorted(messages, key=_position):
        if not ordered or _position(ordered[-1]) != _position(m):
            ordered.append(m)
    return ordered
