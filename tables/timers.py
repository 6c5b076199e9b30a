"""The timers table: durable waits and inactivity checks, keyed by due time (see
mailstream.timers), so the due ones are always at the front of each partition."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.storage import PartitionStore

timers_table = app.Table(
    "timers",
    partitions=config.topics.partitions,
    key_type=bytes,
    value_type=bytes,
    help="Pending timers: due time, user key, kind and workflow; the value is empty.",
)

timers = PartitionStore(timers_table)
