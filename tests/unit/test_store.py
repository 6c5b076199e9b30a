"""The Store contract, held by every implementation: the in-memory store behaves as the
RocksDB one the workers run on (reads, writes, deletions, progress records, key order,
range limits, active partitions)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faust.types import TP

from mailstream.state.memory_store import MemoryStore
from mailstream.state.rocksdb_store import PartitionStore
from mailstream.state.store import PROGRESS_KEY, Store, progress_key
from mailstream.state.timer_keys import TimerKey, due_bound
from tests.fakes.rocksdb_partitions import FaustStore, Table

SUPPORTED_STORES = ["memory", "rocksdb"]


@dataclass
class Subject:
    """A store of the users table, and what the test needs beside the contract: how to
    assign it partitions, and the changelog offset a partition's last write recorded."""

    store: Store
    assign: Callable[[Iterable[int]], None]
    changelog_offset: Callable[[int], int | None]


def make(kind: str, root: Path) -> tuple[Subject, Callable[[], None]]:
    """A subject of that kind, and how to close it."""
    if kind == "memory":
        memory = MemoryStore("users")
        return Subject(memory, memory.assign, memory.changelog_offset), lambda: None
    faust_store = FaustStore(root)
    table = Table(faust_store, "users")

    def persisted(partition: int) -> int | None:
        return faust_store.persisted_offset(TP("users-changelog", partition))

    return Subject(PartitionStore(table), table.assign, persisted), faust_store.close


@pytest.fixture(params=SUPPORTED_STORES)
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    made, close = make(request.param, tmp_path)
    yield made
    close()


@pytest.fixture
def store(subject: Subject) -> Store:
    return subject.store


ADA, BOB, CY = b"default\x1fada", b"default\x1fbob", b"default\x1fcy"


def test_the_store_is_named_after_its_table_and_writes_to_its_changelog(store: Store) -> None:
    assert store.name == "users"
    assert store.changelog_topic == "users-changelog"


def test_a_write_is_read_back_in_its_partition_only(store: Store) -> None:
    assert store.get(0, ADA) is None

    store.write(0, {ADA: b"ada v1", BOB: b"bob v1"}, 7)

    assert store.get(0, ADA) == b"ada v1"
    assert store.get(0, BOB) == b"bob v1"
    assert store.get(1, ADA) is None
    assert store.get(0, CY) is None


def test_a_later_write_replaces_and_a_none_value_deletes(store: Store) -> None:
    store.write(0, {ADA: b"ada v1", BOB: b"bob v1"}, 7)

    store.write(0, {ADA: b"ada v2", BOB: None, CY: None}, 8)  # CY was never there

    assert store.get(0, ADA) == b"ada v2"
    assert store.get(0, BOB) is None
    assert store.get(0, CY) is None
    assert list(store.items(0)) == [(ADA, b"ada v2")]


def test_an_empty_value_is_a_value_not_a_deletion(store: Store) -> None:
    timer = TimerKey(1_000, ADA, "wait", "welcome").encode()  # timers are stored empty

    store.write(0, {timer: b""}, 0)

    assert store.get(0, timer) == b""
    assert list(store.items(0)) == [(timer, b"")]


def test_each_write_records_the_changelog_offset_its_partition_reflects(
    subject: Subject,
) -> None:
    store = subject.store
    assert subject.changelog_offset(3) is None

    store.write(3, {ADA: b"a"}, 41)
    store.write(3, {ADA: None, BOB: b"b"}, 44)
    store.write(0, {}, 2)  # an empty batch still says how far the partition got

    assert subject.changelog_offset(3) == 44
    assert subject.changelog_offset(0) == 2
    assert subject.changelog_offset(1) is None
    assert list(store.items(3)) == [(BOB, b"b")]


@pytest.mark.parametrize(
    ("value", "offset", "note"),
    [
        (b"41", 41, None),
        (b'45 {"processed":3}', 45, b'{"processed":3}'),
        (b"12 ", 12, None),  # an empty note is no note
        (b"0 a note with spaces", 0, b"a note with spaces"),
    ],
)
def test_a_progress_record_gives_its_offset_and_note(
    store: Store, value: bytes, offset: int, note: bytes | None
) -> None:
    store.write(2, {PROGRESS_KEY: value}, 0)

    assert store.progress(2) == offset
    assert store.progress_note(2) == note
    assert store.progress(1) is None  # another partition has none yet


def test_before_any_progress_record_there_is_no_progress_nor_note(store: Store) -> None:
    store.write(0, {ADA: b"a"}, 0)

    assert store.progress(0) is None
    assert store.progress_note(0) is None
    assert store.progress(0, progress_key("mailstream.feedback")) is None


def test_each_topic_has_its_own_progress_record(store: Store) -> None:
    feedback, claims = progress_key("mailstream.feedback"), progress_key("mailstream.claims")
    store.write(0, {feedback: b"10", claims: b"3 note"}, 0)

    assert store.progress(0, key=feedback) == 10
    assert store.progress(0, key=claims) == 3
    assert store.progress_note(0, key=claims) == b"note"
    assert store.progress(0) is None  # the default record is another key


# Keys in byte order: a prefix sorts before its extensions, the control bytes of
# progress records before every tenant id, and 0xff after everything. The RocksDB store
# keeps Faust's persisted offset under b"__faust\x00...", between LOW and HIGH: the key
# scans below take in one side or the other (the engine's never meet that key).
LOW = [PROGRESS_KEY, progress_key("a-topic"), b"A", b"A\x00", b"A\x1fz", b"AB", b"B"]
HIGH = [b"default\x1fada", b"\x7f", b"\xff", b"\xff\xff"]
ORDERED = LOW + HIGH
RECORDS = [key for key in ORDERED if not key.startswith(PROGRESS_KEY)]
BOOKKEEPING = b"_"  # every key of the low side sorts before it, of the high side after
TOP = b"\xff\xff\xff"


@pytest.fixture
def filled(store: Store) -> Store:
    """ORDERED in partition 0, written in shuffled batches, each key's value its key
    reversed; one key in partition 1."""
    keys = list(ORDERED)
    random.Random(3).shuffle(keys)
    store.write(0, {k: k[::-1] for k in keys[:5]}, 0)
    store.write(0, {k: k[::-1] for k in keys[5:]}, 1)
    store.write(1, {b"AA": b"other partition"}, 0)
    return store


def test_items_are_every_record_in_byte_order_without_progress_records(filled: Store) -> None:
    assert [key for key, _ in filled.items(0)] == RECORDS
    assert dict(filled.items(0)) == {k: k[::-1] for k in RECORDS}
    assert list(filled.items(1)) == [(b"AA", b"other partition")]
    assert list(filled.items(2)) == []


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (b"", RECORDS),
        (b"A", RECORDS),  # inclusive
        (b"A\x00\x00", RECORDS[2:]),  # between two keys: from the next one
        (b"default", RECORDS[5:]),
        (b"\xff\xff", [b"\xff\xff"]),
        (b"\xff\xff\x00", []),
    ],
)
def test_items_start_at_the_first_key_not_before_start(
    filled: Store, start: bytes, expected: list[bytes]
) -> None:
    assert [key for key, _ in filled.items(0, start)] == expected


def test_items_read_the_partition_as_it_was_at_the_first_record(filled: Store) -> None:
    # A reader that yields to the event loop between records (the dashboard's count of
    # enrollments) sees none of the writes made meanwhile.
    records = filled.items(0)
    assert next(records) == (b"A", b"A")
    filled.write(0, {b"A\x01": b"new", b"AB": None, b"\xfe": b"new"}, 2)

    assert [key for key, _ in records] == RECORDS[1:]
    assert [key for key, _ in filled.items(0)] == [
        b"A",
        b"A\x00",
        b"A\x01",
        b"A\x1fz",
        b"B",
        b"default\x1fada",
        b"\x7f",
        b"\xfe",
        b"\xff",
        b"\xff\xff",
    ]


@pytest.mark.parametrize(
    ("start", "end", "limit", "expected"),
    [
        (b"", BOOKKEEPING, 100, LOW),  # progress records included
        (b"a", TOP, 100, HIGH),
        (b"", b"A", 100, LOW[:2]),
        (b"A", b"B", 100, [b"A", b"A\x00", b"A\x1fz", b"AB"]),  # [start, end)
        (b"A", b"AB", 100, [b"A", b"A\x00", b"A\x1fz"]),
        (b"A\x00", b"A\x00", 100, []),  # an empty range
        (b"B", b"A", 100, []),  # an inverted one
        (b"A", BOOKKEEPING, 3, [b"A", b"A\x00", b"A\x1fz"]),  # the first ``limit``
        (b"A", b"B", 0, []),
        (b"C", b"D", 100, []),  # between keys
        (b"\x80", TOP, 100, [b"\xff", b"\xff\xff"]),
    ],
)
def test_keys_between_are_the_first_keys_in_the_range_in_byte_order(
    filled: Store, start: bytes, end: bytes, limit: int, expected: list[bytes]
) -> None:
    assert filled.keys_between(0, start, end, limit) == expected
    in_p1 = [b"AA"] if start <= b"AA" < end and limit > 0 else []
    assert filled.keys_between(1, start, end, limit) == in_p1


@pytest.mark.parametrize(
    ("bound", "limit", "expected"),
    [
        (b"A\x1f", 100, LOW[:4]),
        (b"A\x1f", 2, LOW[:2]),
        (b"", 100, []),
        (BOOKKEEPING, 100, LOW),
    ],
)
def test_keys_before_are_the_first_keys_sorting_before_the_bound(
    filled: Store, bound: bytes, limit: int, expected: list[bytes]
) -> None:
    assert filled.keys_before(0, bound, limit) == expected


def test_keys_before_a_due_bound_are_the_timers_due_in_time_order(store: Store) -> None:
    now = 1_700_000_000_000
    timers = [TimerKey(now + d, ADA, "wait", "welcome").encode() for d in (-5000, 0, 1, 9000)]
    store.write(0, {key: b"" for key in reversed(timers)}, 0)

    assert store.keys_before(0, due_bound(now), 10) == timers[:2]
    assert store.keys_before(0, due_bound(now), 1) == timers[:1]

    store.write(0, {timers[0]: None}, 1)  # done
    assert store.keys_before(0, due_bound(now + 1), 10) == timers[1:3]


def test_active_partitions_are_the_assigned_ones_in_order(subject: Subject) -> None:
    store = subject.store
    store.write(5, {ADA: b"a"}, 0)  # holding records of a partition does not own it
    assert store.active_partitions() == []

    subject.assign([3, 0, 1])
    assert store.active_partitions() == [0, 1, 3]

    subject.assign([1])  # a rebalance took two away
    assert store.active_partitions() == [1]
    assert store.get(5, ADA) == b"a"  # what a partition holds stays readable


def answers(store: Store, partition: int, start: bytes, end: bytes, limit: int) -> object:
    """Everything a store says of a partition: scans from ``start`` or to ``end``, and
    its progress records."""
    return (
        store.keys_between(partition, start, end, limit),
        store.keys_before(partition, min(end, BOOKKEEPING), limit),
        list(store.items(partition, start)),
        [(store.progress(partition, k), store.progress_note(partition, k)) for k in PROGRESS],
    )


PROGRESS = [PROGRESS_KEY, progress_key("t")]


def test_the_memory_store_answers_as_rocksdb_over_random_writes(tmp_path: Path) -> None:
    """The same random writes and deletions, over few keys so that they collide, into
    both stores; every read and scan then answers the same."""
    memory, _ = make("memory", tmp_path)
    rocksdb, close = make("rocksdb", tmp_path)
    rng = random.Random(29)
    keys = sorted({bytes(rng.choices(b"\x00\x01AB\xff", k=rng.randint(1, 3))) for _ in range(60)})
    try:
        for offset in range(300):
            partition = rng.randrange(2)
            batch: dict[bytes, bytes | None] = {
                rng.choice(keys): None if rng.random() < 0.4 else rng.randbytes(rng.randint(0, 3))
                for _ in range(rng.randint(0, 6))
            }
            batch.update({k: b"%d %d" % (offset, rng.randrange(9)) for k in PROGRESS[: offset % 3]})
            for subject in (memory, rocksdb):
                subject.store.write(partition, batch, offset)
            start, end = sorted(rng.sample(keys, 2))
            if start < BOOKKEEPING < end:  # clear of the RocksDB store's own key
                end = BOOKKEEPING
            limit = rng.randint(0, 8)
            assert answers(rocksdb.store, partition, start, end, limit) == answers(
                memory.store, partition, start, end, limit
            )
        for partition in (0, 1):
            assert list(rocksdb.store.items(partition)) == list(memory.store.items(partition))
            for key in keys + PROGRESS:
                assert rocksdb.store.get(partition, key) == memory.store.get(partition, key)
            assert rocksdb.changelog_offset(partition) == memory.changelog_offset(partition)
    finally:
        close()
