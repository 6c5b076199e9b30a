"""The replay guard table: the replay keys of signed provider webhooks let through, until
their signatures go stale, and an index of them by that time (mailstream.webhooks.replay).
Partitioned by replay key, like the claims topic it is fed from."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.storage import raw_table
from mailstream.webhooks.replay import due_of

replay_guard = raw_table(
    app,
    "replay_guard",
    config.topics.partitions,
    "Replay keys let through (mailstream.webhooks.replay.Entry) and their expiry index.",
    due=due_of,
)
