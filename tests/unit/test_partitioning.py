"""One partitioner for the engine, and ingest moving an event found outside its user's
partition before anything of the user is read."""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from mailstream.core.ingest_batch import (
    DEAD_LETTERED,
    NOT_READ,
    PROCESSED,
    REROUTED,
    IngestSettings,
    add_to_ledger,
    ingest_batch,
)
from mailstream.kafka.partitioning import keyed_partition, misplaced, partition_for
from mailstream.kafka.records import RawMessage, headers_of
from mailstream.producer import EventProducer
from mailstream.state.staged_flush import Outbox, flush
from tests.unit.users_in_memory import UsersTable

NOW_MS = 1_700_000_000_000
PARTITIONS = 4
SETTINGS = IngestSettings(
    max_event_bytes=4096,
    default_tenant="default",
    dedup_window_s=3600.0,
    dedup_max_ids=1000,
    partitions=PARTITIONS,
)

# Kafka's own test vectors for Utils.murmur2 (clients UtilsTest.testMurmur2): the Java
# client's partition for a key is toPositive(murmur2(key)) % partitions.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "java_hash"), sorted(JAVA_MURMUR2.items()))
@pytest.mark.parametrize("partitions", [1, 3, 4, 12, 1024])
def test_the_partition_is_the_java_clients(key: bytes, java_hash: int, partitions: int) -> None:
    assert partition_for(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


def test_the_partition_is_aiokafkas_default() -> None:
    default = DefaultPartitioner()
    for n in range(500):
        key = f"user-{n}".encode()
        for partitions in (1, 4, 7, 32):
            assert partition_for(key, partitions) == default(key, list(range(partitions)), [])


def test_a_topic_without_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"u", 0)


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default for a keyed message (consistent_random)."""
    return zlib.crc32(key) % partitions


def split_users(count: int) -> list[str]:
    """User ids that librdkafka's default partitioner puts outside their murmur2 partition."""
    found = []
    n = 0
    while len(found) < count:
        user = f"user-{n}"
        if crc32_partition(user.encode(), PARTITIONS) != partition_for(user.encode(), PARTITIONS):
            found.append(user)
        n += 1
    return found


def event(event_id: str, user_id: str, event_type: str = "page_view") -> bytes:
    doc = {"event_id": event_id, "event_type": event_type, "user_id": user_id}
    return orjson.dumps({**doc, "timestamp": NOW_MS - 1000})


def at(partition: int, offset: int, key: bytes | None, value: bytes) -> RawMessage:
    return RawMessage("events", partition, offset, key, value, (("trace", b"t-1"),))


def test_an_event_outside_its_users_partition_is_rerouted_unread() -> None:
    [user] = split_users(1)
    home = partition_for(user.encode(), PARTITIONS)
    wrong = crc32_partition(user.encode(), PARTITIONS)
    moved = at(wrong, 7, user.encode(), event("e1", user))
    store = UsersTable()
    result = ingest_batch([moved], store.load, NOW_MS, SETTINGS)

    assert [(r.message, r.partition) for r in result.reroutes] == [(moved, home)]
    assert result.reroutes[0].message.headers == (("trace", b"t-1"),), "copied as it came"
    assert store.loads == Counter(), "no user state read"
    assert result.changed == {} and result.events == [] and result.dead_letters == []
    assert result.outcomes == {(REROUTED, NOT_READ): 1}
    assert result.by_partition == {wrong: {REROUTED: 1}}


def test_the_copy_in_its_users_partition_is_processed_and_a_second_copy_deduplicated() -> None:
    [user] = split_users(1)
    home = partition_for(user.encode(), PARTITIONS)
    value = event("e1", user)
    first = ingest_batch([at(home, 0, user.encode(), value)], UsersTable().load, NOW_MS, SETTINGS)
    assert first.reroutes == [] and first.outcomes == {(PROCESSED, "page_view"): 1}
    # A crash after the copy and before the progress record copies it twice.
    [stored] = first.changed.values()
    again = ingest_batch([at(home, 1, user.encode(), value)], lambda *_: stored, NOW_MS, SETTINGS)
    assert again.outcomes == {("deduplicated", "page_view"): 1}


def test_a_mixed_batch_reroutes_only_the_misplaced_and_keeps_their_order() -> None:
    users = split_users(2)
    placed = "placed"
    while partition_for(placed.encode(), PARTITIONS) != 0:
        placed += "x"
    messages = [
        at(0, 0, placed.encode(), event("p1", placed)),
        at(
            crc32_partition(users[0].encode(), PARTITIONS),
            0,
            users[0].encode(),
            event("a1", users[0]),
        ),
        at(
            crc32_partition(users[1].encode(), PARTITIONS),
            0,
            users[1].encode(),
            event("b1", users[1]),
        ),
        at(
            crc32_partition(users[0].encode(), PARTITIONS),
            1,
            users[0].encode(),
            event("a2", users[0]),
        ),
    ]
    result = ingest_batch(messages, UsersTable().load, NOW_MS, SETTINGS)
    assert [r.message for r in result.reroutes] == messages[1:]
    assert [r.partition for r in result.reroutes] == [
        partition_for(u.encode(), PARTITIONS) for u in (users[0], users[1], users[0])
    ]
    assert result.outcomes == {(PROCESSED, "page_view"): 1, (REROUTED, NOT_READ): 3}
    # each consumed message in exactly one outcome of its partition's ledger
    assert sum(sum(c.values()) for c in result.by_partition.values()) == len(messages)


def test_a_message_without_a_key_is_still_dead_lettered_where_it_is() -> None:
    result = ingest_batch(
        [at(3, 0, None, event("e1", "anyone"))], UsersTable().load, NOW_MS, SETTINGS
    )
    assert result.reroutes == []
    assert [dl.code for dl in result.dead_letters] == ["missing_key"]
    assert result.outcomes == {(DEAD_LETTERED, "missing_key"): 1}


def test_without_a_partition_count_every_message_is_taken_where_it_is() -> None:
    [user] = split_users(1)
    wrong = crc32_partition(user.encode(), PARTITIONS)
    loose = dataclasses.replace(SETTINGS, partitions=None)
    result = ingest_batch(
        [at(wrong, 0, user.encode(), event("e1", user))], UsersTable().load, NOW_MS, loose
    )
    assert result.reroutes == [] and result.outcomes == {(PROCESSED, "page_view"): 1}


def test_the_ledger_counts_rerouted_beside_the_final_outcomes() -> None:
    raw = add_to_ledger(None, {PROCESSED: 2})
    assert orjson.loads(add_to_ledger(raw, {REROUTED: 3})) == {PROCESSED: 2, REROUTED: 3}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ()),
        ([], ()),
        ([("a", b"1"), ("b", None)], (("a", b"1"), ("b", b""))),
        ({"a": b"1"}, (("a", b"1"),)),
    ],
)
def test_headers_of_any_client(raw: Any, expected: tuple[tuple[str, bytes], ...]) -> None:
    assert headers_of(raw) == expected


@dataclass
class Acked:
    offset: int
    partition: int | None


@dataclass
class MetadataProducer:
    """An aiokafka-like producer that knows each topic's partitions and records sends."""

    counts: dict[str, int]
    sent: list[tuple[str, bytes | None, int | None]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    async def partitions_for(self, topic: str) -> set[int]:
        self.asked.append(topic)
        return set(range(self.counts[topic]))

    async def send(self, topic: str, key: Any, value: Any, partition: Any, *_: Any) -> Any:
        self.sent.append((topic, key, partition))

        async def acked() -> Acked:
            return Acked(len(self.sent), partition)

        return acked()


async def test_a_flush_sends_each_keyed_message_to_its_keys_partition() -> None:
    producer = MetadataProducer({"sends": 4, "dlq": 3})
    box = Outbox()
    keys = [f"user-{n}".encode() for n in range(20)]
    for key in keys:
        box.send("sends", key, b"command")
    box.send("dlq", b"user-1", b"letter")
    box.send("dlq", None, b"keyless")
    await flush(producer, box)

    expected = [("sends", k, partition_for(k, 4)) for k in keys]
    expected += [("dlq", b"user-1", partition_for(b"user-1", 3)), ("dlq", None, None)]
    assert producer.sent == expected
    assert producer.asked == ["sends", "dlq"], "each topic's partitions asked once a flush"


async def test_a_flush_sends_a_message_to_the_partition_it_names() -> None:
    producer = MetadataProducer({"events": 4})
    box = Outbox()
    moved = b"user-1"
    other = next(p for p in range(4) if p != partition_for(moved, 4))
    box.send("events", moved, b"copy", [("trace", b"t")], other)
    await flush(producer, box)
    assert producer.sent == [("events", moved, other)]


async def test_keyed_partition_asks_the_producer_under_fausts() -> None:
    inner = MetadataProducer({"events": 8})

    class FaustLike:
        def _ensure_producer(self) -> MetadataProducer:
            return inner

    assert await keyed_partition(FaustLike(), "events", b"u1") == partition_for(b"u1", 8)
    assert await keyed_partition(FaustLike(), "events", None) is None
    assert await keyed_partition(object(), "events", b"u1") is None


async def test_event_producer_names_the_users_partition_whatever_its_partitioner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[bytes | None, int | None]] = []

    class Client:
        """An aiokafka producer told to put everything in partition 0."""

        def __init__(self, **options: Any) -> None:
            assert options["partitioner"](b"any", [0, 1, 2, 3], []) == 0

        async def partitions_for(self, topic: str) -> set[int]:
            return set(range(PARTITIONS))

        async def send(self, topic: str, value: bytes, *, key: Any, partition: Any = None) -> None:
            sent.append((key, partition if partition is not None else 0))

    monkeypatch.setattr("mailstream.producer.AIOKafkaProducer", Client)
    producer = EventProducer("127.0.0.1:1", partitioner=lambda key, every, available: 0)
    users = split_users(3)
    for user in users:
        await producer.identify(user, {"email": f"{user}@example.com"})
    assert sent == [(u.encode(), partition_for(u.encode(), PARTITIONS)) for u in users]


def test_a_message_outside_its_keys_partition_is_misplaced_and_says_where_it_belongs() -> None:
    home = partition_for(b"u1", 4)
    assert misplaced(b"u1", home, 4) is None
    away = (home + 1) % 4
    reason = misplaced(b"u1", away, 4)
    assert reason is not None
    assert f"found in partition {away}, not in its key's partition {home}" in reason
    # nothing to tell without a key or without the topic's partition count
    assert misplaced(None, away, 4) is None
    assert misplaced(b"u1", away, None) is None
