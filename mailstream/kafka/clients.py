"""Starting an aiokafka client so that nothing is left open when starting fails or is
cancelled."""

from __future__ import annotations

from typing import Any


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
