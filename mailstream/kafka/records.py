"""Consumed Kafka records as the engine takes them in, and which of a batch's offsets a
partition's progress says were applied before."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Headers = tuple[tuple[str, bytes], ...]


@dataclass(slots=True, frozen=True)
class RawMessage:
    """One consumed Kafka message, as the ingest core needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


def headers_of(raw: Any) -> Headers:
    """A consumed record's headers as (name, bytes) pairs, from a client's sequence of
    pairs or mapping (or None)."""
    if not raw:
        return ()
    items = raw.items() if isinstance(raw, Mapping) else raw
    return tuple((str(name), bytes(value or b"")) for name, value in items)


def drop_replays(
    messages: Sequence[RawMessage], progress: Mapping[int, int | None]
) -> tuple[list[RawMessage], int]:
    """The messages of a batch at or after each partition's progress (the consumer
    position stored with the state: the next offset to read), and how many were before it.

    Offsets below the progress were applied before (a replay after a crash or a
    rebalance) and are dropped. Offsets above it are normal on Kafka and never a hole:
    transaction markers, aborted transactions, compaction and retention all leave gaps
    that no consumer is given, and the direct reader reads every record from the
    position on. ``progress[p]`` is None for a partition never processed.
    """
    fresh: list[RawMessage] = []
    replayed = 0
    expected = dict(progress)
    for msg in messages:
        nxt = expected.get(msg.partition)
        if nxt is not None and msg.offset < nxt:
            replayed += 1
            continue
        expected[msg.partition] = msg.offset + 1
        fresh.append(msg)
    return fresh, replayed
