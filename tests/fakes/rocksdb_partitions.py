"""A Faust table as PartitionStore reads it, over real RocksDB partitions in a folder:
Faust's store API (partition databases, persisted offset), its changelog topic's name
and its assignor's active partitions, without an app or a broker."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import rocksdict
from faust.stores.rocksdb import Store as FaustRocksDBStore
from faust.types import TP


class FaustStore:
    """What PartitionStore uses of Faust's RocksDB store, over real RocksDB partitions."""

    offset_key = FaustRocksDBStore.offset_key

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, rocksdict.Rdict] = {}

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            path = str(self.root / f"p{partition}")
            self.dbs[partition] = rocksdict.Rdict(path, options=rocksdict.Options(raw_mode=True))
        return self.dbs[partition]

    def persisted_offset(self, tp: TP) -> int | None:
        """Where Faust's recovery of the partition resumes: its own code, on this store."""
        return FaustRocksDBStore.persisted_offset(self, tp)  # type: ignore[arg-type]

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


class Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class Assignor:
    """The partitions assigned to this worker, of every topic."""

    def __init__(self) -> None:
        self.actives: set[TP] = set()

    def assigned_actives(self) -> set[TP]:
        return set(self.actives)


class App:
    def __init__(self) -> None:
        self.assignor = Assignor()


class Table:
    def __init__(self, data: FaustStore, name: str = "queue") -> None:
        self.name = name
        self.data = data
        self.changelog_topic = Topic(f"{name}-changelog")
        self.app = App()

    def assign(self, partitions: Iterable[int]) -> None:
        """Make these the table's actively owned partitions, as a rebalance would."""
        topic = self.changelog_topic.get_topic_name()
        self.app.assignor.actives = {TP(topic, p) for p in partitions}
