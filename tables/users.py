"""The users table: one record per (tenant, user) with traits, activity, counts, dedup
window and workflow enrollments (mailstream.core.user_state.UserState)."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.state.rocksdb_store import raw_table
from mailstream.state.store import Store

users: Store = raw_table(
    app,
    "users",
    config.topics.partitions,
    "UserState records (mailstream.core.user_state), keyed by tenant and user id.",
)
