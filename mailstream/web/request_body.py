"""Reading an HTTP request body whole, up to a limit, however it arrives."""

from __future__ import annotations

from typing import Protocol


class BodyStream(Protocol):
    """aiohttp's ``request.content``: ``read(n)`` returns up to ``n`` bytes of what has
    arrived, and ``b""`` at the end of the body."""

    async def read(self, n: int = -1) -> bytes: ...


async def read_body(content: BodyStream, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it is over ``limit`` bytes.

    ``content.read(n)`` returns what has arrived so far, not ``n`` bytes: a body sent in
    parts (chunked, or a large one over a slow link) must be read until the end of the
    stream. At most ``limit + 1`` bytes are ever read, whatever the sender declares."""
    parts: list[bytes] = []
    size = 0
    while True:
        part = await content.read(limit + 1 - size)
        if not part:  # the end of the body
            return b"".join(parts)
        parts.append(part)
        size += len(part)
        if size > limit:
            return None
