"""The bench's provider server speaks enough of Postmark's API for mailstream's own
Postmark provider, over keep-alive connections, and notes what arrived."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest

from mailstream.bench.provider_sink import Sink
from mailstream.providers.base import Accepted
from mailstream.providers.postmark import PostmarkProvider, PostmarkSettings
from tests.integration.test_http_providers import message

pytestmark = pytest.mark.timeout(30)


async def test_sends_over_one_provider_are_accepted_and_noted() -> None:
    sink = Sink()
    await sink.start()
    provider = PostmarkProvider(
        PostmarkSettings(base_url=sink.url), {"POSTMARK_SERVER_TOKEN": "bench"}
    )
    await provider.start()
    try:
        sends = [
            dataclasses.replace(
                message(send_id=f"s-{i}"),
                subject=f"Your receipt for order o{i}" if i % 3 == 0 else "Spring sale",
                html="<p>" + "x" * (i * 997 % 20_000) + "</p>",  # bodies split across reads
            )
            for i in range(60)
        ]
        results = await asyncio.gather(*(provider.send(m) for m in sends))
    finally:
        await provider.close()
        await sink.stop()

    assert all(isinstance(r, Accepted) and r.provider_message_id for r in results)
    assert len({r.provider_message_id for r in results}) == 60
    assert len(sink.arrivals) == 60
    assert sorted(sink.receipts) == sorted(f"o{i}" for i in range(0, 60, 3))


def request(subject: str) -> bytes:
    body = b'{"Subject": "%s", "HtmlBody": "%s"}' % (subject.encode(), b"x" * 5000)
    return b"POST /email HTTP/1.1\r\nHost: sink\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


async def test_requests_split_across_writes_or_sharing_one_are_each_answered() -> None:
    sink = Sink()
    await sink.start()
    first, second, third = (request(f"Your receipt for order o{i}") for i in range(3))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
        # the first request in three pieces, the last piece sharing a write with the
        # whole second request
        for piece in (first[:20], first[20:3000], first[3000:] + second):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(third)
        answers = [await reader.readuntil(b"}") for _ in range(3)]
        writer.close()
        await writer.wait_closed()
    finally:
        await sink.stop()

    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers)
    assert sorted(sink.receipts) == ["o0", "o1", "o2"]


async def test_a_request_without_a_length_is_refused() -> None:
    sink = Sink()
    await sink.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def chunks():  # type: ignore[no-untyped-def]
                yield b'{"Subject": "x"}'

            async with session.post(f"{sink.url}/email", data=chunks()) as resp:
                status = resp.status
    finally:
        await sink.stop()

    assert status == 411
    assert sink.arrivals == []
