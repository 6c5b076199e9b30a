"""Direct access to a Faust table's RocksDB partitions, for batched writes.

Faust sends one changelog record per table assignment, which is most of the cost of
an event. mailstream instead folds a whole batch into one state per touched key, sends
those changelog records itself in the format Faust's recovery reads (same topic, same
partition, raw key and value), waits until the broker has them, and only then writes
RocksDB and acknowledges the events. Offsets are committed after the acknowledgement,
so a crash at any point replays events whose changelog records may already exist; the
per-user dedup window makes that replay a no-op. Everything that touches Faust's store
internals lives in this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import rocksdict
from faust.stores.rocksdb import Store as FaustRocksDBStore

from mailstream.kafka.membership import Membership
from mailstream.observability import metrics
from mailstream.state.store import PROGRESS_KEY as PROGRESS_KEY  # where agents/ingest.py reads it
from mailstream.state.store import Store, StoreBase, is_progress

logger = logging.getLogger(__name__)

# RocksDB keeps a tombstone for each deleted key until a compaction carries it to the
# last level, and a scan steps over every tombstone in its range: in a queue-like table
# (keys ordered by the time they are due, deleted once done, the due ones scanned every
# round) the scans slow down with every key ever deleted. 1,000 tombstones cost a scan
# about 0.2 ms. Such a table compacts the range of the due keys it deleted once it has
# deleted QUEUE_COMPACT_EVERY of them, and at least one per COMPACT_BYTES_PER_DELETION of
# its size: a compaction rewrites the keys still waiting in that range too (sends held
# until tomorrow, say), and a big queue is compacted less often.
QUEUE_COMPACT_EVERY = 500
COMPACT_BYTES_PER_DELETION = 2048
_DROP_TOMBSTONES = rocksdict.CompactOptions()
_DROP_TOMBSTONES.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
# Compactions run on a thread of their own, and RocksDB lets go of the GIL meanwhile: one
# first flushes the memtable, behind whatever RocksDB's background threads are busy with
# (a big table's own compaction, say), and the event loop must not wait for that.
_COMPACTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailstream-compact")

# A queue-like table's key -> when it is due (epoch ms); raises ValueError for a key
# that is not queued (a progress record, say).
DueTime = Callable[[bytes], int]


# Faust keeps its own records in the same store, under keys with this prefix: the
# changelog offset a partition reflects under the offset key.
_FAUST_KEYS = b"__faust\x00"
_FAUST_OFFSET_KEY: bytes = FaustRocksDBStore.offset_key


class PartitionStore(StoreBase):
    """Read and write one RocksDB-backed Faust table by partition, bypassing its changelog:
    the ``Store`` (mailstream.state.store) the workers run on."""

    def __init__(self, table: Any, due: DueTime | None = None) -> None:
        self.table = table
        self.name = str(table.name)
        self.due = due
        self.membership: Membership | None = None
        # partition -> due keys deleted since its last compaction: how many, the lowest
        # and the highest, and the count at which to check its size again
        self._deleted: dict[int, tuple[int, bytes, bytes, int]] = {}
        self._compacting: dict[int, Future[None]] = {}

    @property
    def _store(self) -> Any:
        return self.table.data

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self._store._db_for_partition(partition).get(key)
        return None if value is None else bytes(value)

    def write(
        self, partition: int, items: Mapping[bytes, bytes | None], changelog_offset: int
    ) -> None:
        """Write one partition's batch atomically, with the changelog offset it reflects
        (where Faust's recovery resumes: Store.persisted_offset reads it).

        A value of None deletes the key (a tombstone in the changelog). Faust's key index
        (which partition holds a key, for its table API) is not kept: nothing reads these
        tables through that API, and it cost half a microsecond a key."""
        store = self._store
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in items.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        # In the same batch, not by store.set_persisted_offset: one write instead of two,
        # and the offset never runs ahead of or behind the records it covers.
        batch.put(_FAUST_OFFSET_KEY, str(changelog_offset).encode())
        store._db_for_partition(partition).write(batch)
        if self.due is not None:
            self._note_deletions(partition, [k for k, v in items.items() if v is None])

    def _note_deletions(self, partition: int, keys: list[bytes]) -> None:
        """Count the due keys deleted; compact their range once there are enough."""
        assert self.due is not None
        now = int(time.time() * 1000)
        deleted = []
        for key in keys:
            try:
                if self.due(key) <= now:  # not a cancelled wait, which no scan meets yet
                    deleted.append(key)
            except ValueError:
                continue
        if not deleted:
            return
        count, low, high, check = self._deleted.get(
            partition, (0, min(deleted), max(deleted), QUEUE_COMPACT_EVERY)
        )
        count, low, high = count + len(deleted), min(low, *deleted), max(high, *deleted)
        running = self._compacting.get(partition)
        db = self._store._db_for_partition(partition)
        if count < check or (running is not None and not running.done()):
            self._deleted[partition] = (count, low, high, check)
        elif count * COMPACT_BYTES_PER_DELETION < _size(db):
            # too big to rewrite yet: ask again later
            self._deleted[partition] = (count, low, high, count + QUEUE_COMPACT_EVERY)
        else:
            self._deleted.pop(partition, None)
            self._compacting[partition] = _COMPACTOR.submit(self._compact, db, partition, low, high)

    def _compact(self, db: Any, partition: int, low: bytes, high: bytes) -> None:
        started = time.perf_counter()
        try:
            db.compact_range(low, high, _DROP_TOMBSTONES)
        except Exception as exc:  # the tombstones stay, and the next compaction tries again
            logger.warning("compacting %s partition %d failed: %r", self.name, partition, exc)
            return
        metrics.QUEUE_COMPACTION_SECONDS.labels(self.name).observe(time.perf_counter() - started)

    def compacted(self) -> None:
        """Wait for the compactions started so far to finish."""
        for running in list(self._compacting.values()):
            running.result()

    def keys_between(self, partition: int, start: bytes, end: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` keys of a partition in [start, end), in order."""
        found: list[bytes] = []
        db = self._store._db_for_partition(partition)
        for key in db.keys(from_key=start) if start else db.keys():
            if key >= end or len(found) >= limit:
                break
            found.append(bytes(key))
        return found

    def items(self, partition: int, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every record of a partition (from ``start`` on), in key order, without progress
        records and Faust's own bookkeeping (the persisted changelog offset)."""
        db = self._store._db_for_partition(partition)
        for key, value in db.items(from_key=start) if start else db.items():
            raw = bytes(key)
            if not is_progress(raw) and not raw.startswith(_FAUST_KEYS):
                yield raw, bytes(value)

    def find(self, key: bytes) -> bytes | None:
        """Look a key up in every partition this worker actively owns."""
        for db in self._store._dbs_for_actives():
            value = db.get(key)
            if value is not None:
                return bytes(value)
        return None

    def active_partitions(self) -> list[int]:
        if self.membership is not None:  # a worker paused past its session stops here
            self.membership.check(time.monotonic())
        actives = self.table.app.assignor.assigned_actives()
        topic = self.changelog_topic
        return sorted(tp.partition for tp in actives if tp.topic == topic)


# mypy checks here that PartitionStore is a Store.
_: type[Store] = PartitionStore


@dataclass(frozen=True)
class TableSpec:
    """A table as ``tables/`` declares it: its name, what it holds (Faust's help text),
    and, for a queue-like table, its key -> when it is due, to compact away its
    tombstones."""

    name: str
    help: str
    due: DueTime | None = None


def raw_table(
    app: Any, spec: TableSpec, partitions: int, topic_configs: dict[str, str] | None = None
) -> PartitionStore:
    """A RocksDB table of bytes keys and values, partitioned like the events topic;
    ``topic_configs`` go to its changelog topic when Faust creates it."""
    table = app.Table(
        spec.name,
        partitions=partitions,
        extra_topic_configs=topic_configs or {},
        # bytes in, bytes out: Faust picks the raw codec for the changelog and the store.
        key_type=bytes,
        value_type=bytes,
        help=spec.help,
    )
    return PartitionStore(table, spec.due)


def _size(db: Any) -> int:
    """Bytes in a RocksDB database's files (not its memtable, whose size counts the 1 MB
    blocks it allocates; a compaction writes it to a file first)."""
    return sum(int(f["size"]) for f in db.live_files())
