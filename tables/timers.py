"""The timers table: durable waits and inactivity checks, keyed by due time (see
mailstream.state.timer_keys), so the due ones are always at the front of each partition."""

from __future__ import annotations

from typing import Any

from mailstream.state.rocksdb_store import PartitionStore, raw_table
from mailstream.state.timer_keys import timer_due


def timers_table(app: Any, partitions: int) -> PartitionStore:
    return raw_table(
        app,
        "timers",
        partitions,
        "Pending timers: due time, user key, kind and workflow; the value is empty.",
        due=timer_due,
    )
