"""The timers table: durable waits and inactivity checks, keyed by due time (see
mailstream.state.timer_keys), so the due ones are always at the front of each partition."""

from __future__ import annotations

from mailstream.state.rocksdb_store import TableSpec
from mailstream.state.timer_keys import timer_due

TIMERS = TableSpec(
    "timers",
    "Pending timers: due time, user key, kind and workflow; the value is empty.",
    due=timer_due,
)
