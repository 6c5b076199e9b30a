"""Consumed Kafka records as the engine takes them in, and where a batch stands against
a partition's progress (which offsets it applied before, which the consumer skipped)."""

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


@dataclass(slots=True)
class OffsetPlan:
    """Which messages of a batch to process, and which offsets are missing before them."""

    fresh: list[RawMessage]
    replayed: int
    missing: dict[int, list[tuple[int, int]]]  # partition -> [start, end) ranges to fetch


def plan_offsets(messages: Sequence[RawMessage], progress: dict[int, int | None]) -> OffsetPlan:
    """Compare a batch with each partition's next unapplied offset.

    Offsets below it were applied before (a replay after a crash or a rebalance) and are
    dropped; offsets above it mean the consumer skipped messages, which must be fetched
    and applied first. ``progress[p]`` is None for a partition never processed.
    """
    fresh: list[RawMessage] = []
    replayed = 0
    missing: dict[int, list[tuple[int, int]]] = {}
    expected = dict(progress)
    for msg in messages:
        nxt = expected.get(msg.partition)
        if nxt is not None:
            if msg.offset < nxt:
                replayed += 1
                continue
            if msg.offset > nxt:
                missing.setdefault(msg.partition, []).append((nxt, msg.offset))
        expected[msg.partition] = msg.offset + 1
        fresh.append(msg)
    return OffsetPlan(fresh, replayed, missing)
