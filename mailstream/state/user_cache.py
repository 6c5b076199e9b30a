"""Decoded user states kept between batches, checked against the stored bytes.

Decoding a user record is the largest single cost of an event after Faust's own. Most
traffic comes from users seen a moment ago, so the ingest agent keeps the states it
wrote, each with the bytes it wrote, and reuses one only while the store still holds
exactly those bytes: a write by anyone else (a timer, the delivery agent, a recovery)
changes the bytes and the record is decoded afresh.

A state handed out is taken out of the cache (the batch may change it without writing
it, e.g. an event dropped by sampling); it comes back only with what is written.
"""

from __future__ import annotations

from collections import OrderedDict

from mailstream.core.user_state import UserState

Slot = tuple[int, bytes]  # (partition, user key)


class StateCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # least recently written first; an OrderedDict, because taking the first key of a
        # plain dict whose front was deleted many times walks over every deleted slot
        self._entries: OrderedDict[Slot, tuple[bytes, UserState]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, slot: Slot, raw: bytes) -> UserState:
        """The state stored as ``raw``: the cached one if it was written as exactly that."""
        entry = self._entries.pop(slot, None)
        if entry is not None and entry[0] == raw:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return UserState.decode(raw)

    def written(self, slot: Slot, raw: bytes, state: UserState) -> None:
        """``state`` was just written as ``raw``: keep it, dropping the least recently
        written states beyond the capacity."""
        if self.capacity <= 0:
            return
        entries = self._entries
        entries[slot] = (raw, state)
        entries.move_to_end(slot)
        while len(entries) > self.capacity:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
