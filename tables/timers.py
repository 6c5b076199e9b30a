"""The timers table: durable waits and inactivity checks, keyed by due time (see
mailstream.state.timer_keys), so the due ones are always at the front of each partition."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.state.rocksdb_store import raw_table
from mailstream.state.store import Store
from mailstream.state.timer_keys import timer_due

timers: Store = raw_table(
    app,
    "timers",
    config.topics.partitions,
    "Pending timers: due time, user key, kind and workflow; the value is empty.",
    due=timer_due,
)
