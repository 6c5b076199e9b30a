"""Starting an aiokafka client so that nothing is left open when starting fails or is
cancelled."""

from __future__ import annotations

from typing import Any

# A flush fills one record batch per changelog partition (mailstream.state.staged_flush),
# and more, one after another, when a partition's records outgrow it: this holds about
# 350 user records of the bench's mix. Batches of 512 KB and 1 MB made no difference to
# two workers of the bench (three rounds each).
PRODUCER_BATCH_BYTES = 256 * 1024


async def start_client(client: Any) -> None:
    """``await client.start()``; when that raises or is cancelled (a worker told to stop
    while it is still starting), the client is stopped before the error goes on. A
    half-started client keeps its connections and background tasks, and logs itself as
    unclosed when it is collected."""
    try:
        await client.start()
    except BaseException:
        stop = getattr(client, "stop", None) or client.close  # the admin client closes
        await stop()
        raise
