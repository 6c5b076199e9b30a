"""Exactly-once's transactions on Apache Kafka (mailstream.kafka.transactions): a flush
commits whole or not at all, the partition's next owner aborts what its predecessor left
open and fences it, and a fenced worker that still thinks it owns the partition is told
to exit.

Apache Kafka only: the embedded broker (tansu) has no transactions.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.transactions import Fenced, Transactions, committed_ends
from mailstream.state.memory_store import MemoryStore
from mailstream.state.staged_flush import BEFORE_STATE, Outbox, flush
from tests.integration.harness import wait_for

pytestmark = pytest.mark.only_on("kafka", reason="the embedded broker has no transactions")


async def topics(servers: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 2, 3) for n in names])
    finally:
        await admin.close()


async def committed(servers: str, topic: str, partition: int) -> list[tuple[bytes, bytes]]:
    """Every committed record of one partition, read to its last stable offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        got: list[tuple[bytes, bytes]] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                got.extend((r.key, r.value) for r in records)
        return got
    finally:
        await consumer.stop()


def transactions(
    servers: str, app_id: str, lost: list[str], owned: list[int] | None = None
) -> Transactions:
    """Transactions of a worker that owns ``owned`` (a list the test may change)."""
    held = [0] if owned is None else owned
    return Transactions(
        KafkaAccess.plain(servers),
        app_id,
        2,
        {"users": "state"},
        lambda: held,
        lambda: False,
        lost.append,
    )


async def test_a_new_owner_aborts_what_the_old_one_left_open_and_fences_it(broker: Any) -> None:
    servers = broker.bootstrap_servers
    app = f"tx-{uuid.uuid4().hex[:8]}"
    changelog, sends = f"{app}-users-changelog", f"{app}.sends"
    await topics(servers, changelog, sends)
    users = MemoryStore("users", [0], changelog)
    lost_old: list[str] = []
    old, new = transactions(servers, app, lost_old), transactions(servers, app, [])
    try:
        first = Outbox()
        first.put(users, 0, b"u-first", b"1")
        first.send(sends, b"u-first", b"command-1", partition=0, origin=0)
        await flush(old, first)
        # a crashed owner of partition 1 left a transaction open
        crashed = AIOKafkaProducer(
            bootstrap_servers=servers, transactional_id=new.transactional_id("state", 1)
        )
        await crashed.start()
        await crashed.begin_transaction()
        await (await crashed.send(changelog, b"u-open", b"left-open", partition=1))

        await new.take_over([0, 1])
        await crashed.stop()
        late = Outbox()
        late.put(users, 0, b"u-late", b"2", BEFORE_STATE)
        with pytest.raises(Fenced):
            await flush(old, late)
        after = Outbox()
        after.put(users, 0, b"u-new", b"3")
        await flush(new, after)

        # a commit returns before its markers are written: read once they are
        expected = [(b"u-first", b"1"), (b"u-new", b"3")]
        await wait_for(
            lambda: _equal(committed(servers, changelog, 0), expected), 10, "the new commit"
        )
        # the open transaction was ended (its record and an abort marker are below the
        # last stable offset) and none of it is read
        assert await _stable_end(servers, changelog, 1) == 2
        assert await committed(servers, changelog, 1) == []
        assert await committed(servers, sends, 0) == [(b"u-first", b"command-1")]
        # the old owner still held partition 0 as far as it knew: it is told to exit
        assert len(lost_old) == 1 and "fenced" in lost_old[0]
        assert users.get(0, b"u-late") is None  # nothing of a fenced flush is kept
        listed = {TopicPartition(changelog, 0): await _stable_end(servers, changelog, 0)}
        ends = await committed_ends(KafkaAccess.plain(servers), listed)
        # recovery reads to the offset after the last committed record, not to a marker
        assert ends[TopicPartition(changelog, 0)] == (users.changelog_offset(0) or 0) + 1
    finally:
        await old.close()
        await new.close()
        # aiokafka leaves a fenced producer's batch waiters failed and unread; collected
        # here rather than in whatever runs next (CPython 3.11 fails an ast.parse that a
        # collection interrupts with a log call)
        gc.collect()


async def test_a_worker_whose_partition_moved_never_fences_its_new_owner(broker: Any) -> None:
    servers = broker.bootstrap_servers
    app = f"tx-{uuid.uuid4().hex[:8]}"
    changelog = f"{app}-users-changelog"
    await topics(servers, changelog)
    old_users = MemoryStore("users", [0, 1], changelog)
    new_users = MemoryStore("users", [1], changelog)
    owned_by_old = [0, 1]
    lost: list[str] = []
    old = transactions(servers, app, lost, owned_by_old)
    new = transactions(servers, app, [], [1])
    try:
        await old.take_over([0, 1])
        # the group moves partition 1 to the new worker while the old one is busy
        owned_by_old.remove(1)
        await new.take_over([1])
        both = Outbox()
        both.put(old_users, 0, b"u-0", b"kept")
        both.put(old_users, 1, b"u-1", b"moved")
        with pytest.raises(Fenced):
            await flush(old, both)
        # partition 0's transaction committed, and is in the local store as in the
        # changelog; partition 1's did not
        assert old_users.get(0, b"u-0") == b"kept"
        assert old_users.get(1, b"u-1") is None
        # the old worker tries partition 1 again (a retry, a dispatcher's next round):
        # it is refused without starting a producer, which would fence the new owner
        again = Outbox()
        again.put(old_users, 1, b"u-1", b"moved")
        with pytest.raises(Fenced):
            await flush(old, again)
        mine = Outbox()
        mine.put(new_users, 1, b"u-1", b"new owner's")
        await flush(new, mine)
        assert new_users.get(1, b"u-1") == b"new owner's"
        await wait_for(
            lambda: _equal(committed(servers, changelog, 1), [(b"u-1", b"new owner's")]),
            10,
            "the new owner's commit",
        )
        assert await committed(servers, changelog, 0) == [(b"u-0", b"kept")]
        assert lost == []  # fenced while it no longer held the partition: no exit
    finally:
        await old.close()
        await new.close()
        gc.collect()


async def _equal(got: Awaitable[Any], expected: Any) -> bool:
    return await got == expected


async def _stable_end(servers: str, topic: str, partition: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()
