"""A request body is read whole however it arrives: in parts with pauses between them,
chunked, or large; over the limit it is refused without reading the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import TestServer

from mailstream.web.request_body import read_body

LIMIT = 64 * 1024


async def _echo_length(request: web.Request) -> web.Response:
    body = await read_body(request.content, LIMIT)
    if body is None:
        return web.json_response({"error": "too_large"}, status=413)
    return web.json_response({"length": len(body), "tail": body[-8:].decode()})


async def _post(data: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    app = web.Application()
    app.router.add_post("/", _echo_length)
    async with TestServer(app, host="127.0.0.1") as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/"), data=data, headers=headers) as resp:
                return resp.status, await resp.json()


async def _in_parts(parts: list[bytes], pause: float) -> AsyncIterator[bytes]:
    for index, part in enumerate(parts):
        if index:
            await asyncio.sleep(pause)
        yield part


async def test_a_chunked_body_sent_in_two_parts_50ms_apart_is_read_whole() -> None:
    body = b"x" * 2500 + b"y" * 2492 + b"the-tail"
    status, answer = await _post(_in_parts([body[:2500], body[2500:]], 0.05))
    assert status == 200
    assert answer == {"length": 5000, "tail": "the-tail"}


async def test_a_body_with_a_length_sent_in_parts_is_read_whole() -> None:
    body = b"a" * 30_000 + b"b" * 29_992 + b"end-here"
    parts = [body[i : i + 7_000] for i in range(0, len(body), 7_000)]
    headers = {"Content-Length": str(len(body))}
    status, answer = await _post(_in_parts(parts, 0.02), headers)
    assert status == 200
    assert answer == {"length": len(body), "tail": "end-here"}


async def test_a_body_of_exactly_the_limit_is_read() -> None:
    status, answer = await _post(b"z" * (LIMIT - 8) + b"at-limit")
    assert (status, answer) == (200, {"length": LIMIT, "tail": "at-limit"})


async def test_a_body_over_the_limit_is_refused() -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(50 * LIMIT // 4096):  # far more than the limit, in small parts
            yield b"q" * 4096

    status, answer = await _post(endless())
    assert (status, answer) == (413, {"error": "too_large"})


async def test_no_more_than_the_limit_and_one_byte_is_taken_from_the_stream() -> None:
    stream = StreamReader(BaseProtocol(asyncio.get_running_loop()), 20 * LIMIT)
    stream.feed_data(b"w" * (10 * LIMIT))
    stream.feed_eof()
    assert await read_body(stream, LIMIT) is None
    assert len(await stream.read()) == 10 * LIMIT - (LIMIT + 1)
