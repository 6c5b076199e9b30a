"""Which records the retention sweep may delete: finished deliveries and webhook calls
older than their retention, and the sends counters of past days.

A sweep reads a bounded number of records per partition, from where the last sweep of
that partition stopped, and comes back to the start once it reaches the end; so every
record is looked at in turn and no sweep takes long however large the table is.

Pure: the caller passes the records (in key order, from the cursor), the time and the
retention.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from mailstream.delivery.state_machine import FINAL, Delivery

# The deliveries table's record of a partition's sends on a UTC day (sent_key):
# b"\x00sent:" + ISO date, optionally + b"\x1f" + a tenant's lane.
SENT_PREFIX = b"\x00sent:"
# Sends counters are read for today only (the warm-up cap, the tenants' sends per day,
# the dashboard); yesterday's is kept for a day around midnight, older ones go.
SENT_COUNTER_DAYS_KEPT = 2


def sent_key(day: str, tenant: str | None = None) -> bytes:
    """The record counting a partition's sends on a UTC day (ISO date), for the warm-up
    cap and the dashboard, or only a tenant's (its delivery lane's), for its sends per
    day; the control byte keeps it apart from delivery keys."""
    key = SENT_PREFIX + day.encode()
    return key if tenant is None else key + b"\x1f" + tenant.encode()


FINAL_RECORD = "final"
SENT_COUNTER = "sent_counter"


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What one sweep of one partition deletes, and where the next one starts."""

    deletes: list[tuple[bytes, str]] = field(default_factory=list)  # key, kind
    resume: bytes = b""  # the first key the next sweep reads; b"": from the beginning
    read: int = 0


def counter_day(key: bytes) -> date | None:
    """The UTC day of a sends counter's key; None for any other key."""
    if not key.startswith(SENT_PREFIX):
        return None
    day = key[len(SENT_PREFIX) :].partition(b"\x1f")[0]
    try:
        return date.fromisoformat(day.decode())
    except (UnicodeDecodeError, ValueError):
        return None


def old_counter(key: bytes, today: date) -> bool:
    day = counter_day(key)
    return day is not None and (today - day).days >= SENT_COUNTER_DAYS_KEPT


def finished_before(raw: bytes, cutoff_ms: int) -> bool:
    """A delivery or webhook call record in a final state, last changed before
    ``cutoff_ms``. A record that does not decode is never deleted (it is looked into, not
    swept away)."""
    try:
        record = Delivery.decode(raw)
    except (ValueError, KeyError, TypeError):
        return False
    return record.state in FINAL and record.queue_key is None and record.updated < cutoff_ms


def plan_prune(
    records: Iterable[tuple[bytes, bytes]],
    now_ms: int,
    keep_ms: int,
    limit: int,
    counters: bool = False,
) -> PrunePlan:
    """Read at most ``limit`` records (and peek at one more, to know where to resume);
    delete those finished more than ``keep_ms`` before ``now_ms`` and, with
    ``counters``, sends counters of days older than SENT_COUNTER_DAYS_KEPT.

    Keys starting with a zero byte are bookkeeping (progress records, counters): only
    counters are ever deleted among them."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    cutoff = now_ms - keep_ms
    today = datetime.fromtimestamp(now_ms / 1000, tz=UTC).date()
    deletes: list[tuple[bytes, str]] = []
    read = 0
    for key, value in records:
        if read >= limit:
            return PrunePlan(deletes, key, read)
        read += 1
        if key.startswith(b"\x00"):
            if counters and old_counter(key, today):
                deletes.append((key, SENT_COUNTER))
        elif finished_before(value, cutoff):
            deletes.append((key, FINAL_RECORD))
    return PrunePlan(deletes, b"", read)
