"""A per-user window of recently seen event ids, bounded in time and in count."""

from __future__ import annotations

from array import array
from hashlib import blake2b


def id_hash(event_id: str) -> int:
    """A stable 64-bit digest of an event id (collisions are 1 in 2**64 per pair)."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "little")


class SeenIds:
    """Event-id digests with the second each was first seen, oldest first.

    Entries older than the window are dropped when the set is pruned, and the oldest
    are dropped first once ``max_ids`` is exceeded, so memory and disk stay bounded.
    """

    __slots__ = ("_seen",)

    def __init__(self, seen: dict[int, int] | None = None) -> None:
        self._seen: dict[int, int] = seen if seen is not None else {}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, event_id: str) -> bool:
        return self.has(id_hash(event_id))

    def add(self, event_id: str, now_s: int) -> None:
        self.remember(id_hash(event_id), now_s)

    def has(self, digest: int) -> bool:
        """Whether an id with this ``id_hash`` is in the window (hash once, ask twice)."""
        return digest in self._seen

    def remember(self, digest: int, now_s: int) -> None:
        self._seen.setdefault(digest, now_s)

    def check_and_add(self, event_id: str, now_s: int) -> bool:
        """True when the id is already in the window; otherwise remember it and return False."""
        digest = id_hash(event_id)
        if digest in self._seen:
            return True
        self._seen[digest] = now_s
        return False

    def prune(self, now_s: int, window_s: float, max_ids: int) -> None:
        """Forget ids first seen more than ``window_s`` ago, then the oldest beyond ``max_ids``."""
        seen = self._seen
        cutoff = now_s - window_s
        # Insertion order is arrival order, so expired ids sit at the front.
        while seen:
            first = next(iter(seen))
            if seen[first] >= cutoff and len(seen) <= max_ids:
                break
            del seen[first]

    def to_bytes(self) -> bytes:
        digests = array("Q", self._seen.keys())
        times = array("I", self._seen.values())
        return digests.tobytes() + times.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> SeenIds:
        n = len(data) // 12
        digests = array("Q")
        digests.frombytes(data[: 8 * n])
        times = array("I")
        times.frombytes(data[8 * n : 12 * n])
        return cls(dict(zip(digests, times, strict=True)))
