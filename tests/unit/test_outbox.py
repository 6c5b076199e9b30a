"""How a flush orders what it sends: stages, batches, and what reads see before it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from mailstream.kafka.partitioning import partition_for
from mailstream.state import staged_flush as outbox_module
from mailstream.state.memory_store import MemoryStore
from mailstream.state.staged_flush import AFTER_STATE, BEFORE_STATE, STATE, Outbox, flush


@dataclass
class Acked:
    offset: int
    partition: int | None = None


@dataclass
class Producer:
    """Records each send and which sends were still unacknowledged at that moment."""

    offsets: dict[tuple[str, int | None], int] = field(default_factory=dict)
    sent: list[tuple[str, int | None, bytes | None, int]] = field(default_factory=list)
    unacked: list[asyncio.Future[Acked]] = field(default_factory=list)
    in_flight_at_send: list[int] = field(default_factory=list)

    async def send(self, topic: str, key: Any, value: Any, partition: Any, *_: Any) -> Any:
        self.in_flight_at_send.append(sum(not f.done() for f in self.unacked))
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        self.sent.append((topic, partition, key, offset))
        future: asyncio.Future[Acked] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, Acked(offset, partition))
        self.unacked.append(future)
        return future


class Table(MemoryStore):
    """A table in memory that keeps each write it is given: what a flush wrote at once."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.written: list[tuple[int, dict[bytes, bytes | None], int]] = []

    def write(
        self, partition: int, items: Mapping[bytes, bytes | None], changelog_offset: int
    ) -> None:
        self.written.append((partition, dict(items), changelog_offset))
        super().write(partition, items, changelog_offset)


def three_stage_outbox(users: Table, timers: Table) -> Outbox:
    box = Outbox()
    box.put(timers, 0, b"t1", b"1", BEFORE_STATE)
    box.put(timers, 0, b"t2", b"2", BEFORE_STATE)
    box.send("sends", b"u1", b"command")
    box.put(users, 0, b"u1", b"a")
    box.put(users, 0, b"u2", b"b")
    box.put(users, 1, b"u3", b"c")
    box.put(users, 0, b"progress", b"10")
    box.put(timers, 0, b"old", None, AFTER_STATE)
    return box


async def test_each_partition_ends_with_the_records_last_key_and_stores_get_acked_offsets() -> None:
    users, timers = Table("users"), Table("timers")
    producer = Producer()
    await flush(producer, three_stage_outbox(users, timers))

    order = [(topic, partition, key) for topic, partition, key, _ in producer.sent]
    # stages in order: timers and the command, then user state with progress last,
    # then the timer deletion
    assert order.index(("timers-changelog", 0, b"t2")) < order.index(("users-changelog", 0, b"u1"))
    assert order.index(("users-changelog", 0, b"progress")) < order.index(
        ("timers-changelog", 0, b"old")
    )
    assert users.written == [
        (0, {b"u1": b"a", b"u2": b"b", b"progress": b"10"}, 2),
        (1, {b"u3": b"c"}, 0),
    ]
    assert timers.written == [(0, {b"t1": b"1", b"t2": b"2", b"old": None}, 2)]
    # and the tables hold what was sent, with the changelog offset it reached
    assert dict(users.items(0)) == {b"u1": b"a", b"u2": b"b", b"progress": b"10"}
    assert (users.changelog_offset(0), users.changelog_offset(1)) == (2, 0)


async def test_a_stage_goes_in_one_round() -> None:
    users, timers = Table("users"), Table("timers")
    producer = Producer()
    await flush(producer, three_stage_outbox(users, timers))
    # u1, u2, u3 and progress are sent back to back, none waiting for another's ack
    state = [
        n
        for (t, _, _, _), n in zip(producer.sent, producer.in_flight_at_send, strict=True)
        if t == "users-changelog"
    ]
    assert state == [0, 1, 2, 3]
    in_flight = {
        (topic, key): n
        for (topic, _, key, _), n in zip(producer.sent, producer.in_flight_at_send, strict=True)
    }
    assert in_flight[("sends", b"u1")] == 2  # the command travels with the first stage


@dataclass
class Msg:
    partition: int
    offset: int


@pytest.mark.parametrize(
    ("notes", "expected"),
    [
        (None, {0: b"13", 1: b"5"}),
        ({0: b'{"processed":3}'}, {0: b'13 {"processed":3}', 1: b"5"}),
        ({0: b"", 1: b"x"}, {0: b"13", 1: b"5 x"}),
    ],
)
def test_a_progress_record_is_the_next_offset_with_its_partitions_note(
    notes: dict[int, bytes] | None, expected: dict[int, bytes]
) -> None:
    box = Outbox()
    users = Table("users")
    box.put(users, 0, b"u1", b"a")
    box.put_progress(users, [Msg(0, 10), Msg(1, 4), Msg(0, 12)], b"progress", notes)
    written = {p: items for (store, p), items in box.writes[1].items() if store is users}
    assert {p: items[b"progress"] for p, items in written.items()} == expected
    assert list(written[0]) == [b"u1", b"progress"]  # after the batch's other writes


class Builder:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, *, key: bytes, value: bytes | None, timestamp: Any) -> object | None:
        if len(self.records) == self.capacity:
            return None  # full, as aiokafka's builder says
        self.records.append((key, value))
        return object()


@dataclass
class BatchingClient:
    """aiokafka's producer as a flush uses it: batches of at most ``capacity`` records."""

    capacity: int
    inner: Producer = field(default_factory=Producer)
    batches: list[tuple[str, int, list[bytes]]] = field(default_factory=list)

    def create_batch(self) -> Builder:
        return Builder(self.capacity)

    async def send_batch(self, batch: Builder, topic: str, *, partition: int) -> Any:
        self.batches.append((topic, partition, [k for k, _ in batch.records]))
        futures = [await self.inner.send(topic, k, v, partition) for k, v in batch.records]
        return futures[0]  # a batch is acknowledged with its base offset


@dataclass
class FaustProducer:
    client: BatchingClient

    def _ensure_producer(self) -> BatchingClient:
        return self.client

    async def send(self, *args: Any) -> Any:
        return await self.client.inner.send(*args)


@pytest.mark.parametrize("capacity", [1, 2, 100])
async def test_batched_records_keep_their_order_and_stores_get_the_last_acked_offset(
    capacity: int,
) -> None:
    users, timers = Table("users"), Table("timers")
    client = BatchingClient(capacity)
    await flush(FaustProducer(client), three_stage_outbox(users, timers))

    # the same records and offsets as record by record
    assert users.written == [
        (0, {b"u1": b"a", b"u2": b"b", b"progress": b"10"}, 2),
        (1, {b"u3": b"c"}, 0),
    ]
    assert timers.written == [(0, {b"t1": b"1", b"t2": b"2", b"old": None}, 2)]
    users_p0 = [
        k for t, p, keys in client.batches if (t, p) == ("users-changelog", 0) for k in keys
    ]
    assert users_p0 == [b"u1", b"u2", b"progress"]
    assert all(len(keys) <= capacity for _, _, keys in client.batches)
    if capacity == 100:  # one batch per partition and stage
        assert ("users-changelog", 0, [b"u1", b"u2", b"progress"]) in client.batches
    assert [k for t, _, k, _ in client.inner.sent if t == "sends"] == [b"u1"]


async def test_messages_of_a_handed_off_topic_are_handed_over_once_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users, timers = Table("users"), Table("timers")
    producer = Producer()
    handed: list[tuple[object, ...]] = []
    sent_when_handed: list[int] = []

    def take(written: list[outbox_module.Written]) -> None:
        handed.extend(written)
        sent_when_handed.append(len(producer.sent))

    monkeypatch.setitem(outbox_module.HANDOFF, "sends", take)
    box = three_stage_outbox(users, timers)
    box.send("dlq", b"u1", b"a dead letter")  # a topic nobody takes
    await flush(producer, box)
    # the command, with the partition and offset the broker gave it
    assert handed == [("sends", None, 0, b"u1", b"command", 0)]
    # right after the first stage: before any user record was sent
    assert all(t != "users-changelog" for t, *_ in producer.sent[: sent_when_handed[0]])


async def test_staged_is_told_each_stage_once_the_broker_has_acknowledged_it() -> None:
    users, timers = Table("users"), Table("timers")
    producer = Producer()
    told: list[tuple[int, list[bytes | None]]] = []

    def staged(stage: int) -> None:
        # what had been sent by then, all of it acknowledged
        assert all(f.done() for f in producer.unacked)
        assert users.written == []  # the stores are written after the last stage
        told.append((stage, [key for _, _, key, _ in producer.sent]))

    await flush(producer, three_stage_outbox(users, timers), staged)
    assert [stage for stage, _ in told] == [BEFORE_STATE, 1, AFTER_STATE]
    assert b"progress" not in told[0][1] and b"progress" in told[1][1]
    assert b"old" not in told[1][1] and b"old" in told[2][1]


QUEUE = {0: {b"b": b"stored b", b"d": b"stored d", b"f": b"stored f"}, 1: {b"a": b"x"}}


def stored_queue() -> MemoryStore:
    queue = MemoryStore("queue")
    for partition, items in QUEUE.items():
        queue.write(partition, items, 0)
    return queue


def pending_queue(queue: MemoryStore) -> Outbox:
    box = Outbox()
    box.put(queue, 0, b"c", b"new c", BEFORE_STATE)  # queued by this outbox
    box.put(queue, 0, b"d", None, AFTER_STATE)  # taken off the queue by it
    box.put(queue, 0, b"z", b"new z", BEFORE_STATE)  # past every range asked below
    return box


@pytest.mark.parametrize(
    ("partition", "start", "end", "limit", "expected"),
    [
        (0, b"a", b"y", 10, [b"b", b"c", b"f"]),  # pending added, pending deleted dropped
        (0, b"c", b"e", 10, [b"c"]),
        (0, b"a", b"c", 10, [b"b"]),  # the end bound excludes the pending key
        (0, b"a", b"{", 10, [b"b", b"c", b"f", b"z"]),
        (0, b"a", b"y", 2, [b"b", b"c"]),
        # the store read stops at its limit (d, pending deletion): a pending key past the
        # last key read would jump ahead of stored keys not read, so it waits for a
        # later read
        (0, b"d", b"{", 1, []),
        (1, b"a", b"z", 10, [b"a"]),  # nothing pending in that partition
    ],
)
def test_keys_between_reads_the_store_as_the_outbox_will_leave_it(
    partition: int, start: bytes, end: bytes, limit: int, expected: list[bytes]
) -> None:
    queue = stored_queue()
    box = pending_queue(queue)
    assert box.keys_between(queue, partition, start, end, limit) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [(b"b", b"stored b"), (b"c", b"new c"), (b"d", None), (b"nothing", None)],
)
def test_get_prefers_the_pending_write_and_a_pending_deletion_hides_the_stored_value(
    key: bytes, expected: bytes | None
) -> None:
    queue = stored_queue()
    box = pending_queue(queue)
    assert box.get(queue, 0, key) == expected
    assert box.lookup(queue, 0, key) == (key in (b"c", b"d"), expected if key == b"c" else None)


def test_a_merged_outbox_keeps_both_writes_in_order_and_the_later_write_of_a_key_wins() -> None:
    users = Table("users")
    first, second = Outbox(), Outbox()
    first.put(users, 0, b"a", b"1")
    first.put(users, 0, b"progress", b"10")
    first.send("dlq", b"k", b"first letter")
    second.put(users, 0, b"b", b"2", BEFORE_STATE)
    second.put(users, 0, b"a", b"3")  # the same key, written later
    second.send("dlq", b"k", b"second letter")
    first.merge(second)
    assert list(first.writes[BEFORE_STATE][(users, 0)].items()) == [(b"b", b"2")]
    assert list(first.writes[1][(users, 0)].items()) == [(b"progress", b"10"), (b"a", b"3")]
    assert [m[2] for m in first.messages] == [b"first letter", b"second letter"]


async def test_progress_moved_to_the_end_is_sent_after_writes_put_after_it() -> None:
    # A send chosen in the round that queued it: its `attempting` record is put after the
    # progress record of the batch that accepted it. Sent in that order, a crash between
    # the two would leave the command's offset passed with no record of it.
    deliveries = Table("deliveries")
    box = Outbox()
    box.put(deliveries, 0, b"send-1", b"queued")
    box.put(deliveries, 0, b"progress", b"41")
    box.put(deliveries, 0, b"send-1", b"attempting")
    box.move_to_end(deliveries, [b"progress", b"not written"])
    producer = Producer()
    await flush(producer, box)
    assert [key for _, _, key, _ in producer.sent] == [b"send-1", b"progress"]


def test_cut_by_origin_each_partition_gets_its_writes_and_the_messages_that_belong_there() -> None:
    users, timers = Table("users"), Table("timers")
    box = three_stage_outbox(users, timers)  # "sends" keyed u1, no origin given
    box.send("dlq", b"someone-else", b"moved", origin=1)  # read in 1, keyed elsewhere
    box.send("sends", b"u3", b"command")
    partitions = 4

    parts = box.by_origin(partitions)

    home = {key: partition_for(key, partitions) for key in (b"u1", b"u3")}
    assert set(parts) == {0, 1} | set(home.values())
    assert parts[0].writes[BEFORE_STATE] == {(timers, 0): {b"t1": b"1", b"t2": b"2"}}
    assert parts[0].writes[AFTER_STATE] == {(timers, 0): {b"old": None}}
    assert parts[1].writes[STATE] == {(users, 1): {b"u3": b"c"}}
    assert ("dlq", b"someone-else", b"moved", None, None) in parts[1].messages
    for key, partition in home.items():
        assert ("sends", key, b"command", None, None) in parts[partition].messages
    assert sum(len(p.messages) for p in parts.values()) == 3
    assert all(p.origins == [n] * len(p.messages) for n, p in parts.items())


def test_cut_by_origin_refuses_a_message_with_neither_key_nor_origin_among_partitions() -> None:
    users = Table("users")
    box = Outbox()
    box.put(users, 0, b"u1", b"a")
    box.send("dlq", None, b"x")
    assert box.by_origin(4)[0].messages == [("dlq", None, b"x", None, None)]

    box.put(users, 1, b"u2", b"b")
    with pytest.raises(ValueError, match="without a key or an origin"):
        box.by_origin(4)
