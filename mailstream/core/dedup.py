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

    The window is kept as its stored form, two arrays in arrival order (digests, then
    the seconds), so encoding it is a copy however many ids it holds: a user record is
    rewritten with every event of that user, and a busy user's window holds thousands.
    The lookup table is built from the arrays when first asked, not when decoded.
    """

    __slots__ = ("_digests", "_times", "_index")

    def __init__(self, digests: array[int] | None = None, times: array[int] | None = None) -> None:
        self._digests: array[int] = digests if digests is not None else array("Q")
        self._times: array[int] = times if times is not None else array("I")
        # digest -> second first seen; None until a lookup needs it
        self._index: dict[int, int] | None = None if len(self._digests) else {}

    def _lookup(self) -> dict[int, int]:
        if self._index is None:
            self._index = dict(zip(self._digests, self._times, strict=True))
        return self._index

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, event_id: str) -> bool:
        return self.has(id_hash(event_id))

    def add(self, event_id: str, now_s: int) -> None:
        self.remember(id_hash(event_id), now_s)

    def has(self, digest: int) -> bool:
        """Whether an id with this ``id_hash`` is in the window (hash once, ask twice)."""
        return digest in self._lookup()

    def remember(self, digest: int, now_s: int) -> bool:
        """Add an id with this ``id_hash`` unless it is in the window; whether it was new."""
        index = self._lookup()
        if digest in index:
            return False
        index[digest] = now_s
        self._digests.append(digest)
        self._times.append(now_s)
        return True

    def check_and_add(self, event_id: str, now_s: int) -> bool:
        """True when the id is already in the window; otherwise remember it and return False."""
        return not self.remember(id_hash(event_id), now_s)

    def prune(self, now_s: int, window_s: float, max_ids: int) -> None:
        """Forget ids first seen more than ``window_s`` ago, then the oldest beyond ``max_ids``."""
        times = self._times
        cutoff = now_s - window_s
        # Arrival order: expired ids sit at the front.
        drop = max(0, len(times) - max_ids)
        while drop < len(times) and times[drop] < cutoff:
            drop += 1
        if not drop:
            return
        if self._index is not None:
            index = self._index
            for digest in self._digests[:drop]:
                del index[digest]
        del self._digests[:drop]
        del times[:drop]

    def to_bytes(self) -> bytes:
        return self._digests.tobytes() + self._times.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> SeenIds:
        n = len(data) // 12
        digests = array("Q")
        digests.frombytes(data[: 8 * n])
        times = array("I")
        times.frombytes(data[8 * n : 12 * n])
        return cls(digests, times)
