"""The one interface the engine reads and writes its tables through: ``Store``.

A table holds bytes keys and bytes values, split into the partitions of the topics that
feed it; each partition keeps its keys in byte order. Beside its records, a partition
holds progress records: the next offset of an input topic it has not applied yet,
optionally followed by a space and a note that changes with it in one record. They are
written like any record (``staged_flush.Outbox.put_progress``) and read with
``progress``/``progress_note``; ``items`` leaves them out, the key scans do not. Keys
starting with ``__faust`` and a NUL byte are an implementation's own (the RocksDB store keeps
Faust's persisted changelog offset there): ``items`` leaves them out too, and a key scan
whose range takes them in may list them.

Implementations: ``rocksdb_store.PartitionStore`` (a Faust table's RocksDB partitions,
what the workers run on) and ``memory_store.MemoryStore`` (for tests and tools). Both pass
the same contract tests (tests/unit/test_store.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Protocol

# One per partition: the next events offset that partition's state has not yet applied,
# optionally followed by a space and a note that must change with it in one record (the
# users table's ledger: mailstream.core.ingest_batch.add_to_ledger). The control byte keeps it apart
# from user keys, which always start with a tenant id.
PROGRESS_KEY = b"\x00next-offset"


def progress_key(topic: str) -> bytes:
    """The progress record of a table fed by several topics: one per topic."""
    return PROGRESS_KEY + b":" + topic.encode()


def is_progress(key: bytes) -> bool:
    """Whether ``key`` is a progress record's (``PROGRESS_KEY`` or a ``progress_key``)."""
    return key.startswith(PROGRESS_KEY)


class Store(Protocol):
    """One partitioned table of bytes keys and values, as the engine uses it."""

    @property
    def name(self) -> str:
        """The table's name: labels its metrics and orders the flushes' locks."""
        ...

    @property
    def changelog_topic(self) -> str:
        """The topic a flush sends the table's records to, partition for partition."""
        ...

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The value stored under ``key`` in ``partition``; None if there is none."""
        ...

    def progress(self, partition: int, key: bytes = PROGRESS_KEY) -> int | None:
        """The offset in the progress record under ``key``; None before one is written."""
        ...

    def progress_note(self, partition: int, key: bytes = PROGRESS_KEY) -> bytes | None:
        """The note after the offset in that progress record; None without one or a note."""
        ...

    def write(
        self, partition: int, items: Mapping[bytes, bytes | None], changelog_offset: int
    ) -> None:
        """Apply ``items`` to ``partition`` all at once (a None value deletes its key),
        recording ``changelog_offset``, the changelog offset the partition then reflects."""
        ...

    def keys_before(self, partition: int, bound: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` keys sorting before ``bound``, ascending (progress keys too)."""
        ...

    def keys_between(self, partition: int, start: bytes, end: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` keys in [start, end), ascending (progress keys too)."""
        ...

    def items(self, partition: int, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every record from ``start`` on, ascending by key, without progress records."""
        ...

    def active_partitions(self) -> list[int]:
        """The partitions this worker actively owns, ascending."""
        ...


class StoreBase(ABC):
    """What an implementation of ``Store`` derives from its ``get`` and ``keys_between``."""

    @abstractmethod
    def get(self, partition: int, key: bytes) -> bytes | None: ...

    @abstractmethod
    def keys_between(self, partition: int, start: bytes, end: bytes, limit: int) -> list[bytes]: ...

    def progress(self, partition: int, key: bytes = PROGRESS_KEY) -> int | None:
        value = self.get(partition, key)
        return None if value is None else int(value.partition(b" ")[0])

    def progress_note(self, partition: int, key: bytes = PROGRESS_KEY) -> bytes | None:
        """What the progress record carries after its offset (None: nothing)."""
        value = self.get(partition, key)
        note = None if value is None else value.partition(b" ")[2]
        return note or None

    def keys_before(self, partition: int, bound: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` keys of a partition that sort before ``bound``, in order."""
        return self.keys_between(partition, b"", bound, limit)
