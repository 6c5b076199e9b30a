"""The users table: one record per (tenant, user) with traits, activity, counts, dedup
window and workflow enrollments (mailstream.core.user_state.UserState)."""

from __future__ import annotations

from mailstream.state.rocksdb_store import TableSpec

USERS = TableSpec(
    "users", "UserState records (mailstream.core.user_state), keyed by tenant and user id."
)
