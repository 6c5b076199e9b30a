"""A Kafka client that fails or is cancelled while starting is stopped, not left open."""

from __future__ import annotations

import asyncio

import pytest

from mailstream.kafka.clients import start_client


class Client:
    def __init__(self, fails: bool = False, hangs: bool = False) -> None:
        self.fails, self.hangs = fails, hangs
        self.stopped = 0

    async def start(self) -> None:
        if self.hangs:
            await asyncio.Event().wait()  # a broker that accepts and never answers
        if self.fails:
            raise ConnectionError("no broker")

    async def stop(self) -> None:
        self.stopped += 1


class AdminClient(Client):
    """aiokafka's admin client closes rather than stops."""

    stop = None  # type: ignore[assignment]

    async def close(self) -> None:
        self.stopped += 1


async def test_a_client_cancelled_while_starting_is_stopped() -> None:
    client = Client(hangs=True)
    task = asyncio.create_task(start_client(client))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.stopped == 1


async def test_a_client_that_fails_to_start_is_stopped_and_the_error_goes_on() -> None:
    for client in (Client(fails=True), AdminClient(fails=True)):
        with pytest.raises(ConnectionError):
            await start_client(client)
        assert client.stopped == 1


async def test_a_client_that_starts_is_left_running() -> None:
    client = Client()
    await start_client(client)
    assert client.stopped == 0
