"""The users table: one record per (tenant, user) with traits, activity, counts and dedup."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.storage import PartitionStore

users_table = app.Table(
    "users",
    partitions=config.topics.partitions,
    # bytes in, bytes out: Faust picks the raw codec for the changelog and the store.
    key_type=bytes,
    value_type=bytes,
    help="UserState records (mailstream.users), keyed by tenant and user id.",
)

users = PartitionStore(users_table)
