"""The replay guard table: the replay keys of signed provider webhooks let through, until
their signatures go stale, and an index of them by that time (mailstream.feedback.replay_guard).
Partitioned by replay key, like the claims topic it is fed from."""

from __future__ import annotations

from mailstream.feedback.replay_guard import due_of
from mailstream.state.rocksdb_store import TableSpec

REPLAY_GUARD = TableSpec(
    "replay_guard",
    "Replay keys let through (mailstream.feedback.replay_guard.Entry) and their expiry index.",
    due=due_of,
)
