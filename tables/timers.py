"""The timers table: durable waits and inactivity checks, keyed by due time (see
mailstream.timers), so the due ones are always at the front of each partition."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.storage import QUEUE_COMPACT_EVERY, raw_table

timers = raw_table(
    app,
    "timers",
    config.topics.partitions,
    "Pending timers: due time, user key, kind and workflow; the value is empty.",
    compact_every=QUEUE_COMPACT_EVERY,
)
