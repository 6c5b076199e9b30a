"""A queue-like table drops the tombstones of what it deleted, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rocksdict

from mailstream.storage import PartitionStore


class FaustStore:
    """What PartitionStore uses of Faust's RocksDB store, over real RocksDB partitions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, rocksdict.Rdict] = {}
        self._key_index: dict[bytes, int] = {}
        self.persisted: dict[Any, int] = {}

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            path = str(self.root / f"p{partition}")
            self.dbs[partition] = rocksdict.Rdict(path, options=rocksdict.Options(raw_mode=True))
        return self.dbs[partition]

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


class Topic:
    def get_topic_name(self) -> str:
        return "queue-changelog"


class Table:
    def __init__(self, data: FaustStore) -> None:
        self.name = "queue"
        self.data = data
        self.changelog_topic = Topic()


@pytest.fixture
def faust_store(tmp_path: Path) -> Any:
    store = FaustStore(tmp_path)
    yield store
    store.close()


def tombstones(db: rocksdict.Rdict) -> int:
    """Deletions RocksDB still holds: in the memtable and in every table file."""
    in_memory = db.property_int_value("rocksdb.num-deletes-active-mem-table") or 0
    return in_memory + sum(f["num_deletions"] for f in db.live_files())


def churn(store: PartitionStore, partition: int, start: int, n: int) -> None:
    """``n`` sends through a queue: each key written, then deleted once done."""
    for i in range(start, start + n):
        key = b"q%08d" % i
        store.write(partition, {key: b"command"}, 2 * i)
        store.write(partition, {key: None}, 2 * i + 1)


@pytest.mark.parametrize(
    ("compact_every", "churned", "most_left"),
    [
        (0, 300, None),  # no compaction: every deletion leaves a tombstone
        (100, 350, 100),  # compacted three times: at most one round's deletions remain
        (100, 99, 99),  # too few deletions to compact yet
    ],
)
def test_queue_tombstones_are_bounded(
    faust_store: FaustStore, compact_every: int, churned: int, most_left: int | None
) -> None:
    store = PartitionStore(Table(faust_store), compact_every=compact_every)
    churn(store, 0, 0, churned)
    left = tombstones(faust_store._db_for_partition(0))
    if most_left is None:
        assert left >= churned
    else:
        assert left <= most_left


def test_compaction_keeps_live_keys_and_other_partitions(faust_store: FaustStore) -> None:
    store = PartitionStore(Table(faust_store), compact_every=50)
    # waiting sends inside and beyond the range the deletions span
    waiting = {b"q%08d" % i: b"wait %d" % i for i in (10, 25, 1_000)}
    store.write(0, waiting, 0)
    store.write(1, {b"q00000001": b"other partition"}, 0)
    store.write(1, {b"q00000002": b"deleted later"}, 1)
    store.write(1, {b"q00000002": None}, 2)
    churn(store, 0, 30, 120)
    assert store.keys_between(0, b"", b"\xff", 100) == sorted(waiting)
    assert all(store.get(0, key) == value for key, value in waiting.items())
    assert store.get(1, b"q00000001") == b"other partition"
    # partition 1 had one deletion: counted apart, not compacted with partition 0's
    assert tombstones(faust_store._db_for_partition(1)) == 1
    assert tombstones(faust_store._db_for_partition(0)) <= 50
    assert faust_store.persisted  # the changelog offset is still recorded
