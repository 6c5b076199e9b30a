"""What only the RocksDB store does: a queue-like table drops the tombstones of what it
deleted, and nothing else; Faust's persisted offset; active partitions from the assignor."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from faust.types import TP

from mailstream.delivery.state_machine import QueueKey, queue_ready
from mailstream.state.rocksdb_store import PartitionStore
from mailstream.state.timer_keys import TimerKey, timer_due
from tests.fakes.rocksdb_partitions import FaustStore, Table


@pytest.fixture
def faust_store(tmp_path: Path) -> Any:
    store = FaustStore(tmp_path)
    yield store
    store.close()


def tombstones(db: rocksdict.Rdict, store: PartitionStore | None = None) -> int:
    """Deletions RocksDB still holds, in the memtable and in every table file, once the
    compactions ``store`` started have finished."""
    if store is not None:
        store.compacted()
    in_memory = db.property_int_value("rocksdb.num-deletes-active-mem-table") or 0
    return in_memory + sum(f["num_deletions"] for f in db.live_files())


PAST = 1_700_000_000_000  # epoch ms: long due
FUTURE = 4_000_000_000_000


def timer(at: int, n: int) -> bytes:
    return TimerKey(at, b"default\x1fuser-%d" % n, "wait", "welcome").encode()


def churn(store: PartitionStore, partition: int, keys: list[bytes]) -> None:
    """Each key written, then deleted once done, as a queue's are."""
    for i, key in enumerate(keys):
        store.write(partition, {key: b"command"}, 2 * i)
        store.write(partition, {key: None}, 2 * i + 1)


@pytest.mark.parametrize(
    ("due", "cancelled", "left"),
    [
        # compacted (on its own thread, while the deletions go on): at most what came
        # after the last compaction started
        (1_050, 0, range(551)),
        (499, 0, [499]),  # too few deletions to compact yet
        # deletions of keys not due yet (cancelled waits) do not count towards one
        (400, 400, [800]),
    ],
)
def test_queue_tombstones_are_bounded(
    faust_store: FaustStore, due: int, cancelled: int, left: Any
) -> None:
    store = PartitionStore(Table(faust_store), due=timer_due)
    churn(store, 0, [timer(PAST + i, i) for i in range(due)])
    churn(store, 0, [timer(FUTURE + i, i) for i in range(cancelled)])
    assert tombstones(faust_store._db_for_partition(0), store) in left


def test_other_tables_keep_their_tombstones(faust_store: FaustStore) -> None:
    store = PartitionStore(Table(faust_store))
    churn(store, 0, [timer(PAST + i, i) for i in range(1_050)])
    assert tombstones(faust_store._db_for_partition(0), store) >= 1_050


def test_compaction_keeps_live_keys_and_other_partitions(faust_store: FaustStore) -> None:
    store = PartitionStore(Table(faust_store), due=timer_due)
    # timers still pending, inside and beyond the range the deletions span
    waiting = {timer(PAST + i, i): b"" for i in (10, 25)} | {timer(FUTURE, 1): b""}
    store.write(0, waiting, 0)
    store.write(1, {timer(PAST, 1): b"other partition"}, 0)
    store.write(1, {timer(PAST, 2): b""}, 1)
    store.write(1, {timer(PAST, 2): None}, 2)
    churn(store, 0, [timer(PAST + i, 1_000 + i) for i in range(600)])
    assert [key for key, _ in store.items(0)] == sorted(waiting)
    assert store.get(1, timer(PAST, 1)) == b"other partition"
    # partition 1 had one deletion: counted apart, not compacted with partition 0's
    assert tombstones(faust_store._db_for_partition(1), store) == 1
    assert tombstones(faust_store._db_for_partition(0), store) < 600
    assert faust_store.persisted_offset(TP("queue-changelog", 0)) == 2 * 599 + 1


def test_a_big_queue_is_compacted_less_often(faust_store: FaustStore) -> None:
    """Each compaction rewrites the sends still held in its range: with 4 MB of them it
    waits for 2,500 deletions (2 KB of table for each) instead of 500."""
    store = PartitionStore(Table(faust_store), due=queue_ready)
    db = faust_store._db_for_partition(0)
    rng = random.Random(7)  # commands that do not compress to nothing in the table files
    held = {QueueKey(3, PAST + n, f"held-{n}").encode(): rng.randbytes(1_000) for n in range(4_000)}
    store.write(0, held, 0)
    db.flush()  # held for a while: in a table file
    sent = [QueueKey(r, PAST + n, f"sent-{r}-{n}").encode() for n in range(600) for r in (0, 5)]
    churn(store, 0, sent[:1_000])
    assert tombstones(db, store) >= 1_000  # not yet
    churn(store, 0, sent[1_000:] + [QueueKey(0, PAST, f"more-{n}").encode() for n in range(1_400)])
    assert tombstones(db, store) < 1_000
    assert [key for key, _ in store.items(0)] == sorted(held)


def test_each_write_records_the_changelog_offset_where_faust_recovery_reads_it(
    faust_store: FaustStore,
) -> None:
    store = PartitionStore(Table(faust_store))
    tp = TP("queue-changelog", 3)
    assert faust_store.persisted_offset(tp) is None

    store.write(3, {b"default\x1fuser-1": b"state"}, 41)
    store.write(3, {b"default\x1fuser-1": None, b"default\x1fuser-2": b"s"}, 44)

    assert faust_store.persisted_offset(tp) == 44
    assert faust_store.persisted_offset(TP("queue-changelog", 0)) is None
    # Faust's record is its own: the table's records do not include it
    assert list(store.items(3)) == [(b"default\x1fuser-2", b"s")]


def test_active_partitions_are_those_of_the_tables_own_changelog(faust_store: FaustStore) -> None:
    table = Table(faust_store)
    store = PartitionStore(table)
    table.assign([2, 0])
    # the assignor holds every topic's partitions: another table's are not this one's
    table.app.assignor.actives |= {TP("users-changelog", 1), TP("mailstream.events", 3)}

    assert store.active_partitions() == [0, 2]
