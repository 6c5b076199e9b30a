"""Durable timer keys: ordered by due time, so the due ones are a prefix of the table."""

from __future__ import annotations

import struct
from dataclasses import dataclass

_DUE = struct.Struct(">Q")  # big-endian, so byte order is time order


@dataclass(frozen=True, slots=True)
class TimerKey:
    due: int  # epoch ms
    user_key: bytes
    kind: str
    workflow: str

    def encode(self) -> bytes:
        return (
            _DUE.pack(self.due)
            + self.user_key
            + b"\x00"
            + self.kind.encode()
            + b"\x00"
            + self.workflow.encode()
        )

    @classmethod
    def decode(cls, raw: bytes) -> TimerKey:
        (due,) = _DUE.unpack_from(raw)
        user_key, kind, workflow = raw[_DUE.size :].split(b"\x00", 2)
        return cls(due, user_key, kind.decode(), workflow.decode())


def timer_due(raw: bytes) -> int:
    """When the timer of a key is due (mailstream.state.rocksdb_store.DueTime)."""
    if len(raw) < _DUE.size:
        raise ValueError("not a timer key")
    return int(_DUE.unpack_from(raw)[0])


def due_bound(now: int) -> bytes:
    """Every key of a timer due at or before ``now`` sorts before this."""
    return _DUE.pack(now + 1)
