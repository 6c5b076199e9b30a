"""What an agent that reads topics into a table keeps: each topic's progress record (the
consumer position stored with the state), the lock its batches take, and replays dropped."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mailstream.kafka.records import RawMessage, drop_replays
from mailstream.observability import metrics
from mailstream.state.staged_flush import Outbox, flush
from mailstream.state.store import Store, progress_key

logger = logging.getLogger(__name__)

# The batch wait of an agent whose topic a direct reader reads
# (mailstream.kafka.direct_reader): Faust keeps its partitions paused, so its stream brings
# at most what was fetched before the pause, which is dropped (``Intake.drain``). A short
# wait would only wake the take loop 100 times a second for nothing.
PAUSED_WITHIN = 1.0


class Intake:
    """The progress record of each topic an agent reads into ``store``, and the lock its
    batches take.

    A progress record holds the partition's consumer position: the next offset to read.
    Kafka gives a consumer no record at some offsets (transaction markers, aborted
    transactions, compacted or deleted records), so the position can be past the last
    applied record + 1; a gap is never a hole to fill. The direct reader reads every record
    from the stored position on, so nothing else reads these topics for the agent."""

    def __init__(
        self,
        store: Store,
        topics: Iterable[str] | Mapping[str, bytes],
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
        self.lock = lock or asyncio.Lock()

    def progress(self, topic: str) -> Callable[[int], int | None]:
        return functools.partial(self.store.progress, key=self.keys[topic])

    def position(self, topic: str, partition: int) -> int | None:
        """``topic``'s stored position in ``partition`` (None: nothing read yet)."""
        return self.store.progress(partition, self.keys[topic])

    async def fresh(self, messages: list[RawMessage], topic: str) -> list[RawMessage]:
        """The messages of ``topic`` not applied yet; replays are dropped and counted."""
        mine = [m for m in messages if m.topic == topic]
        if not mine:
            return []
        progress = self.progress(topic)
        fresh, replayed = drop_replays(mine, {p: progress(p) for p in {m.partition for m in mine}})
        metrics.REPLAYED.inc(replayed)
        return fresh

    def put_progress(self, outbox: Outbox, fresh: list[RawMessage], topic: str) -> None:
        """Each partition's progress record for ``topic``, after the batch's other writes."""
        outbox.put_progress(self.store, fresh, self.keys[topic])

    def advanced(self, positions: Mapping[tuple[str, int], int]) -> Outbox:
        """The progress records of the partitions whose consumer position moved past
        their stored one with no record to apply (it passed transaction markers, an aborted
        transaction, compacted records): without them the lag would never reach 0. Each
        keeps its note (the ingest ledger, the replay guard's clock)."""
        outbox = Outbox()
        for (topic, partition), position in positions.items():
            key = self.keys.get(topic)
            if key is None or position <= (self.store.progress(partition, key) or 0):
                continue
            note = self.store.progress_note(partition, key)
            value = str(position).encode() + (b" " + note if note else b"")
            outbox.put(self.store, partition, key, value)
        return outbox

    async def advance(self, positions: Mapping[tuple[str, int], int], producer: Any) -> None:
        """Write and flush the progress records ``advanced`` gives (through ``producer``)."""
        outbox = self.advanced(positions)
        if outbox:
            await flush(producer, outbox)

    async def drain(self, stream: Any, size: int = 500) -> None:
        """The loop of a Faust agent that only keeps a topic's partitions assigned while a
        direct reader reads them: what its stream brings (fetched before the pause) is
        acknowledged unapplied, as the reader reads every record from the progress."""
        async for batch in stream.noack_take(size, within=PAUSED_WITHIN):
            for event in batch:
                await stream.ack(event)
