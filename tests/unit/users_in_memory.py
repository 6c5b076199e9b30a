"""The users table in memory, read and written as the ingest agent does: a user record is
decoded on load and encoded on write, a batch's records written at once per partition."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from mailstream.core.user_state import UserState, user_key
from mailstream.state.memory_store import MemoryStore


class UsersTable:
    def __init__(self) -> None:
        self.table = MemoryStore("users")
        self.loads: Counter[tuple[int, bytes]] = Counter()
        self.partitions: set[int] = set()  # written to
        self.offset = 0  # the changelog offset the next write reaches

    def load(self, partition: int, key: bytes) -> UserState | None:
        """The loader ingest_batch takes; counts every read."""
        self.loads[(partition, key)] += 1
        raw = self.table.get(partition, key)
        return None if raw is None else UserState.decode(raw)

    def write(self, changed: Mapping[tuple[int, bytes], UserState]) -> None:
        """A batch's changed users, one write per partition."""
        batches: dict[int, dict[bytes, bytes | None]] = {}
        for (partition, key), state in changed.items():
            batches.setdefault(partition, {})[key] = state.encode()
        for partition, items in batches.items():
            self.table.write(partition, items, self.offset)
            self.offset += len(items)
            self.partitions.add(partition)

    @property
    def data(self) -> dict[tuple[int, bytes], bytes]:
        """Every record, by (partition, key)."""
        return {(p, k): v for p in sorted(self.partitions) for k, v in self.table.items(p)}

    def user(self, user_id: str, tenant_id: str = "default", partition: int = 0) -> UserState:
        raw = self.table.get(partition, user_key(tenant_id, user_id))
        assert raw is not None, f"no record of {tenant_id}/{user_id} in partition {partition}"
        return UserState.decode(raw)
