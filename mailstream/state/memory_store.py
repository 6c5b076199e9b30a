"""A table held in memory: the ``Store`` contract without RocksDB, Faust or a broker."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping

from mailstream.state.store import Store, StoreBase, is_progress


class MemoryStore(StoreBase):
    """Every partition a dict plus its keys kept sorted, so that key scans and ``items``
    run in byte order and stop where RocksDB's iterators would. Nothing is durable; the
    changelog offset each write records is kept for ``changelog_offset``."""

    def __init__(
        self,
        name: str = "memory",
        partitions: Iterable[int] = (),
        changelog_topic: str | None = None,
    ) -> None:
        """``partitions``: the ones this worker actively owns (``assign`` changes them);
        any partition can be read and written. ``changelog_topic``: by default named as
        Faust names a table's."""
        self.name = name
        self.changelog_topic = changelog_topic or f"{name}-changelog"
        self._active = sorted(set(partitions))
        self._values: dict[int, dict[bytes, bytes]] = {}
        self._keys: dict[int, list[bytes]] = {}  # each partition's keys, ascending
        self._offsets: dict[int, int] = {}

    def assign(self, partitions: Iterable[int]) -> None:
        """Own these partitions actively from now on (a rebalance)."""
        self._active = sorted(set(partitions))

    def changelog_offset(self, partition: int) -> int | None:
        """The changelog offset the last write to ``partition`` recorded (None: no write)."""
        return self._offsets.get(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._values.get(partition, {}).get(key)

    def write(
        self, partition: int, items: Mapping[bytes, bytes | None], changelog_offset: int
    ) -> None:
        values = self._values.setdefault(partition, {})
        keys = self._keys.setdefault(partition, [])
        for key, value in items.items():
            key = bytes(key)
            if value is None:
                if values.pop(key, None) is not None:
                    del keys[bisect_left(keys, key)]
            else:
                if key not in values:
                    insort(keys, key)
                values[key] = bytes(value)
        self._offsets[partition] = changelog_offset

    def keys_between(self, partition: int, start: bytes, end: bytes, limit: int) -> list[bytes]:
        keys = self._keys.get(partition, [])
        first = bisect_left(keys, start)
        return keys[first : min(bisect_left(keys, end, lo=first), first + limit)]

    def items(self, partition: int, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        # as of the first read, like a RocksDB iterator: writes meanwhile go unseen
        keys = self._keys.get(partition, [])
        values = self._values.get(partition, {})
        snapshot = [(key, values[key]) for key in keys[bisect_left(keys, start) :]]
        for key, value in snapshot:
            if not is_progress(key):
                yield key, value

    def active_partitions(self) -> list[int]:
        return list(self._active)


# mypy checks here that MemoryStore is a Store.
_: type[Store] = MemoryStore
