"""Reading an HTTP request body whole, up to a limit, however it arrives."""

from __future__ import annotations

from typing import Any, Protocol


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


def content_type(request: Any) -> str | None:
    """The media type a request declares, or None when its Content-Type header does not
    parse: Python's header parser raises on some malformed values (``;0*``, say), and a
    bad header must get a 4xx, never a 500."""
    try:
        return str(request.content_type)
    except Exception:
        return None


async def read_form(request: Any) -> Any | None:
    """The form a request posts (aiohttp's ``post()``), or None when its Content-Type
    header does not parse."""
    if content_type(request) is None:
        return None
    return await request.post()
