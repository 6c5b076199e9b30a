"""The users table: one record per (tenant, user) with traits, activity, counts, dedup
window and workflow enrollments (mailstream.core.user_state.UserState)."""

from __future__ import annotations

from typing import Any

from mailstream.state.rocksdb_store import PartitionStore, raw_table


def users_table(app: Any, partitions: int) -> PartitionStore:
    return raw_table(
        app,
        "users",
        partitions,
        "UserState records (mailstream.core.user_state), keyed by tenant and user id.",
    )
