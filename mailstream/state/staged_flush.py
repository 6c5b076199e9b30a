"""Collect a batch's state writes and messages, then make them durable in stages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aiokafka import AIOKafkaProducer

from mailstream.kafka.partitioning import partition_count, partition_for
from mailstream.observability import metrics
from mailstream.state.store import Store

Headers = list[tuple[str, bytes]]
# topic, key, value, headers, partition (None: the key's, from partition_for)
Message = tuple[str, bytes | None, bytes, Headers | None, int | None]


class Consumed(Protocol):
    """Where a consumed message came from."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


# The ingest agent and the timer task both change user state; one at a time per worker.
STATE_LOCK = asyncio.Lock()

# A crash can land between any two records, so what a user record relies on must be
# acknowledged before the record is sent: a replay after the crash is deduplicated
# against that record and would not recreate it.
BEFORE_STATE = 0  # new timers, send commands, dead letters
STATE = 1  # user records, then each partition's progress record
AFTER_STATE = 2  # timer deletions: a stale timer is harmless, a missing one is not
STAGES = (BEFORE_STATE, STATE, AFTER_STATE)


@dataclass
class Outbox:
    # stage -> (store, partition) -> key -> value (None deletes); insertion order is send order
    writes: dict[int, dict[tuple[Store, int], dict[bytes, bytes | None]]] = field(
        default_factory=lambda: {stage: {} for stage in STAGES}
    )
    messages: list[Message] = field(default_factory=list)
    # per message, the partition whose state it belongs with (None: its key's), which
    # under exactly-once decides the transaction it commits in
    origins: list[int | None] = field(default_factory=list)

    def put(
        self,
        store: Store,
        partition: int,
        key: bytes,
        value: bytes | None,
        stage: int = STATE,
    ) -> None:
        for other in STAGES:  # a later write of a key replaces an earlier one
            if other != stage:
                self.writes[other].get((store, partition), {}).pop(key, None)
        items = self.writes[stage].setdefault((store, partition), {})
        items.pop(key, None)
        items[key] = value

    def lookup(self, store: Store, partition: int, key: bytes) -> tuple[bool, bytes | None]:
        """Whether this outbox writes ``key``, and what (None: a deletion)."""
        for stage in STAGES:
            items = self.writes[stage].get((store, partition))
            if items is not None and key in items:
                return True, items[key]
        return False, None

    def get(self, store: Store, partition: int, key: bytes) -> bytes | None:
        """``key`` as it will be once this outbox is written: its pending value (None for a
        pending deletion), or else the store's; so a batch sees its own earlier changes."""
        found, value = self.lookup(store, partition, key)
        return value if found else store.get(partition, key)

    def keys_between(
        self, store: Store, partition: int, start: bytes, end: bytes, limit: int
    ) -> list[bytes]:
        """``store.keys_between`` as it will be once this outbox is written."""
        pending: dict[bytes, bytes | None] = {}
        for stage in STAGES:
            pending.update(self.writes[stage].get((store, partition), {}))
        stored = store.keys_between(partition, start, end, limit)
        if not pending:
            return stored
        added = {k for k, v in pending.items() if v is not None and start <= k < end}
        if len(stored) >= limit:  # past the last stored key read, the store was not read
            added = {k for k in added if k < stored[-1]}
        keys = sorted(added.union(k for k in stored if k not in pending or pending[k] is not None))
        return keys[:limit]

    def merge(self, other: Outbox) -> None:
        """Add ``other``'s writes and messages after this outbox's own."""
        for stage in STAGES:
            for (store, partition), items in other.writes[stage].items():
                for key, value in items.items():
                    self.put(store, partition, key, value, stage)
        self.messages.extend(other.messages)
        self.origins.extend(other.origins)

    def move_to_end(self, store: Store, keys: Iterable[bytes]) -> None:
        """Send ``keys`` of ``store`` after everything else in their partitions (progress
        records, once more writes were put after them)."""
        wanted = set(keys)
        for stage in STAGES:
            for (slot_store, _), items in self.writes[stage].items():
                if slot_store is store:
                    for key in [k for k in items if k in wanted]:
                        items[key] = items.pop(key)

    def put_progress(
        self,
        store: Store,
        messages: Iterable[Consumed],
        key: bytes,
        notes: dict[int, bytes] | None = None,
    ) -> None:
        """Each partition's progress record: the offset after the last of ``messages`` in
        it, and that partition's note if ``notes`` has one (written in the same record, so
        the two change together). Put it after everything else the batch writes to
        ``store``, so it is sent last."""
        following: dict[int, int] = {}
        for m in messages:
            following[m.partition] = max(following.get(m.partition, 0), m.offset + 1)
        for partition, offset in following.items():
            value = str(offset).encode()
            note = (notes or {}).get(partition)
            if note:
                value += b" " + note
            self.put(store, partition, key, value)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers | None = None,
        partition: int | None = None,
        origin: int | None = None,
    ) -> None:
        """A message to a topic; sent with the first stage, before any state. Without
        ``partition``, a keyed message goes to its key's partition (partition_for).
        ``origin``: the partition of the state it belongs with, where that is not its
        key's (a dead letter or a copy of a message read from another partition)."""
        self.messages.append((topic, key, value, headers, partition))
        self.origins.append(origin)

    def by_origin(self, partitions: int) -> dict[int, Outbox]:
        """This outbox cut in one per partition of the tables (of ``partitions``): each
        partition's state writes, with the messages that belong with them (their
        ``origin``, else their key's partition). Under exactly-once each commits in
        that partition's transaction."""
        parts: dict[int, Outbox] = {}
        for stage, slots in self.writes.items():
            for (store, partition), items in slots.items():
                parts.setdefault(partition, Outbox()).writes[stage][(store, partition)] = items
        for message, origin in zip(self.messages, self.origins, strict=True):
            key = message[1]
            if origin is None and key is not None:
                origin = partition_for(key, partitions)
            elif origin is None and len(parts) == 1:
                origin = next(iter(parts))
            elif origin is None:
                raise ValueError(
                    f"a message to {message[0]} without a key or an origin, in a flush of"
                    f" partitions {sorted(parts)}: no transaction to put it in"
                )
            part = parts.setdefault(origin, Outbox())
            part.messages.append(message)
            part.origins.append(origin)
        return parts

    def __bool__(self) -> bool:
        return bool(self.messages or any(self.writes.values()))


# One flush at a time per store: a store records the changelog offset its local state
# reflects, and recovery replays the changelog from there. Two overlapping flushes could
# record the later one's offset before the earlier one's records are applied locally,
# and a crash then would skip those records on recovery.
_STORE_LOCKS: dict[str, asyncio.Lock] = {}

# topic -> told of the messages a flush wrote to it, once the broker has acknowledged
# them (or they have committed): (topic, partition, offset, key, value, since) each, where
# the offsets from ``since`` up to ``offset`` hold nothing a reader sees (the marker of
# this worker's previous transaction), or ``since`` is ``offset``. The delivery agent
# takes the send commands this worker writes from here rather than waiting for a fetch.
Written = tuple[str, int, int, bytes | None, bytes, int]
HANDOFF: dict[str, Callable[[list[Written]], None]] = {}


# one transaction's messages, the broker's metadata of each, and per (topic, partition)
# the offset its first message there follows on from (see ``Written``)
Committed = tuple[list[Message], list[Any], dict[tuple[str, int], int]]


# told of each transaction of a flush that commits: its part of the outbox, per changelog
# slot the highest offset written, and its messages (``Committed``)
OnCommitted = Callable[[Outbox, dict[tuple[Store, int], int], Committed], None]


@runtime_checkable
class Committer(Protocol):
    """What a flush goes through under exactly-once (mailstream.kafka.transactions): it
    commits an outbox in Kafka transactions, one per partition, calls ``committed`` for
    each that commits, and raises if any did not."""

    async def commit_outbox(self, outbox: Outbox, committed: OnCommitted) -> None: ...


async def flush(producer: Any, outbox: Outbox, staged: Callable[[int], None] | None = None) -> None:
    """Send every record and message stage by stage, each stage acknowledged by the
    broker before the next starts, then write the local stores. Callers acknowledge
    their input only after this returns. ``staged(stage)`` is called as each stage is
    acknowledged, for what may go ahead once that much is durable.

    ``producer`` may be a ``Committer`` instead (exactly-once): then everything is
    written in one transaction per partition, and ``staged`` is called for every stage
    once all of them have committed."""
    names = sorted({store.name for stage in outbox.writes.values() for store, _ in stage})
    locks = [_STORE_LOCKS.setdefault(name, asyncio.Lock()) for name in names]
    for lock in locks:  # always in name order, so two flushes cannot deadlock
        await lock.acquire()
    try:
        if isinstance(producer, Committer):
            await _commit(producer, outbox, staged)
        else:
            await _flush(producer, outbox, staged)
    finally:
        for lock in reversed(locks):
            lock.release()


async def send_records(
    producer: Any,
    items: dict[tuple[Store, int], dict[bytes, bytes | None]],
    messages: list[Message],
) -> tuple[dict[tuple[Store, int], int], list[Any]]:
    """Send changelog records (and messages) and wait for the broker's acknowledgement.
    Returns the highest changelog offset acknowledged per slot, and each message's
    record metadata."""
    batches = _batch_producer(producer)
    # (slot, how many records its future's offset covers, future)
    pending: list[tuple[tuple[Store, int], int, Any]] = []
    for slot, records in items.items():
        if batches is not None:
            pending.extend(await _send_batches(batches, slot, list(records.items())))
        else:
            for key, value in records.items():
                pending.append((slot, 1, await _send_record(producer, slot, key, value)))
    futures = [future for _, _, future in pending]
    counts: dict[str, int | None] = {}  # topic -> its partitions, asked once a flush
    for topic, msg_key, value, headers, partition in messages:
        if partition is None and msg_key is not None:
            # Never the client's default partitioner: the engine's, whatever that is.
            if topic not in counts:
                counts[topic] = await partition_count(producer, topic)
            count = counts[topic]
            partition = None if count is None else partition_for(msg_key, count)
        futures.append(await _send(producer, topic, msg_key, value, partition, headers))
    last: dict[tuple[Store, int], int] = {}
    if not futures:
        return last, []
    # every future waited for, so none is left failing unread when one fails
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    acked: list[Any] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        acked.append(outcome)
    for (slot, count, _), md in zip(pending, acked[: len(pending)], strict=True):
        # md.offset: the record's, or the first of a batch of ``count``
        last[slot] = max(md.offset + count - 1, last.get(slot, -1))
    return last, list(acked[len(pending) :])


def _hand_off(
    messages: list[Message], acked: list[Any], since: dict[tuple[str, int], int] | None = None
) -> None:
    """``since``: per (topic, partition), where the first of ``messages`` in it follows on
    from, when that is before its offset (the rest follow on from the one before)."""
    written: dict[str, list[Written]] = {}
    for (topic, key, value, _, _), md in zip(messages, acked, strict=True):
        if topic in HANDOFF:
            start = (since or {}).pop((topic, md.partition), md.offset)
            written.setdefault(topic, []).append(
                (topic, md.partition, md.offset, key, value, start)
            )
    for topic, items in written.items():
        HANDOFF[topic](items)


async def _send_record(
    producer: Any, slot: tuple[Store, int], key: bytes, value: bytes | None
) -> Any:
    return await _send(producer, slot[0].changelog_topic, key, value, slot[1], None)


async def _send(
    producer: Any,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    partition: int | None,
    headers: Headers | None,
) -> Any:
    """``producer.send`` of Faust's producer, or of an aiokafka one (exactly-once's), whose
    arguments come in another order."""
    if isinstance(producer, AIOKafkaProducer):
        return await producer.send(topic, value, key, partition, None, headers)
    return await producer.send(topic, key, value, partition, None, headers)


def _batch_producer(producer: Any) -> Any:
    """The aiokafka producer (or the one under Faust's), whose record batches a flush
    fills itself: one future per batch instead of one per record. None: send record by
    record."""
    ensure = getattr(producer, "_ensure_producer", None)
    inner = producer if ensure is None else ensure()
    return inner if hasattr(inner, "create_batch") else None


async def _send_batches(
    producer: Any,
    slot: tuple[Store, int],
    records: list[tuple[bytes, bytes | None]],
) -> list[tuple[tuple[Store, int], int, Any]]:
    """One slot's records in as few record batches as they fit, in order."""
    topic, partition = slot[0].changelog_topic, slot[1]
    sent: list[tuple[tuple[Store, int], int, Any]] = []
    builder, count = producer.create_batch(), 0
    for key, value in records:
        while builder.append(key=key, value=value, timestamp=None) is None:  # full
            if count == 0:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit a batch")
            sent.append(
                (slot, count, await producer.send_batch(builder, topic, partition=partition))
            )
            builder, count = producer.create_batch(), 0
        count += 1
    if count:
        sent.append((slot, count, await producer.send_batch(builder, topic, partition=partition)))
    return sent


async def _flush(
    producer: Any, outbox: Outbox, staged: Callable[[int], None] | None = None
) -> None:
    last: dict[tuple[Store, int], int] = {}
    for stage in STAGES:
        messages = outbox.messages if stage == BEFORE_STATE else []
        acked, written = await send_records(producer, outbox.writes[stage], messages)
        if HANDOFF and written:
            _hand_off(messages, written)
        if staged is not None:
            staged(stage)
        for slot, offset in acked.items():
            last[slot] = max(offset, last.get(slot, -1))
    _write_locally(outbox, last)


async def _commit(
    committer: Committer, outbox: Outbox, staged: Callable[[int], None] | None = None
) -> None:
    def committed(part: Outbox, last: dict[tuple[Store, int], int], done: Committed) -> None:
        # Each part as it commits, even if another fails: the local stores then hold
        # what the changelogs do, and a retry of the flush finds that part applied.
        messages, written, since = done
        if HANDOFF:  # only what has committed: a reader of committed records sees it too
            _hand_off(messages, written, dict(since))
        _write_locally(part, last)

    await committer.commit_outbox(outbox, committed)
    if staged is not None:
        for stage in STAGES:
            staged(stage)


def _write_locally(outbox: Outbox, last: dict[tuple[Store, int], int]) -> None:
    """Write the flushed records to the local stores, each slot with the changelog
    offset of its last record (where its recovery goes on from)."""
    merged: dict[tuple[Store, int], dict[bytes, bytes | None]] = {}
    for stage in STAGES:
        for slot, items in outbox.writes[stage].items():
            merged.setdefault(slot, {}).update(items)
    for slot, items in merged.items():
        store, partition = slot
        store.write(partition, items, last[slot])
        metrics.labelled(metrics.CHANGELOG_RECORDS, store.name).inc(len(items))
