"""The direct reader against the real broker: each message applied once, in order, from
the progress kept by what it applies; messages this worker wrote are taken as offered."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaProducer

from mailstream.kafka.direct_reader import DirectReader
from mailstream.kafka.embedded_broker import EmbeddedBroker
from mailstream.kafka.records import RawMessage
from mailstream.kafka.topics import ensure_topics


class Applier:
    """What the agents do with a batch: apply it in order and record the next offset,
    as a progress record would."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, int, bytes | None]] = []  # partition, offset, value
        self.progress: dict[tuple[str, int], int] = {}
        self.replays = 0  # messages handed over again after they were applied
        self.takes = 0.0  # seconds each batch takes to apply, as a flush would
        self.markers: set[int] = set()  # offsets that hold a transaction marker

    async def __call__(self, messages: list[RawMessage]) -> None:
        if self.takes:
            await asyncio.sleep(self.takes)
        for m in messages:
            expected = self.progress.get((m.topic, m.partition), 0)
            while expected in self.markers:
                expected += 1
            if m.offset < expected:
                self.replays += 1  # below the progress record: skipped
                continue
            assert m.offset == expected, f"offset {m.offset} applied before {expected}"
            self.applied.append((m.partition, m.offset, m.value))
            self.progress[(m.topic, m.partition)] = m.offset + 1

    def offsets(self, partition: int) -> list[int]:
        return [o for p, o, _ in self.applied if p == partition]


async def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def reading(
    reader: DirectReader, owned: Callable[[], list[int]] = lambda: [0, 1]
) -> AsyncIterator[Applier]:
    """The reader running on the ``owned`` partitions (0 and 1), applying into the Applier
    yielded."""
    applier = Applier()
    task = asyncio.create_task(
        reader.run(
            owned,
            lambda t, p: applier.progress.get((t, p)),
            lambda: True,
            applier,
            asyncio.Lock(),
        )
    )
    try:
        yield applier
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.close()


@pytest.fixture
async def topic(broker: EmbeddedBroker) -> str:
    name = f"reader-{secrets.token_hex(4)}"
    await ensure_topics(broker.bootstrap_servers, [name], 2)
    return name


@pytest.fixture
async def producer(broker: EmbeddedBroker) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def _write(
    producer: AIOKafkaProducer, topic: str, partition: int, value: bytes
) -> RawMessage:
    md = await producer.send_and_wait(topic, value, key=b"k", partition=partition)
    return RawMessage(topic, partition, md.offset, b"k", value)


async def test_written_messages_are_taken_from_the_offer_and_are_not_fetched_again(
    broker: EmbeddedBroker, topic: str, producer: AIOKafkaProducer
) -> None:
    # Fetches that wait 3 s for data: the offer must not wait for one to end.
    reader = DirectReader(broker.bootstrap_servers, [topic], 100, within=3.0, fetch_max_wait=3.0)
    async with reading(reader) as applier:
        for i in range(3):
            await _write(producer, topic, 0, f"fetched-{i}".encode())
        await _until(lambda: applier.offsets(0) == [0, 1, 2], "the first three, fetched")

        # The next one as the outbox hands it over. Offered here before the broker has
        # it, so only the offer can bring it now; the value tells the two copies apart.
        offered = time.monotonic()
        reader.offer([RawMessage(topic, 0, 3, b"k", b"as offered")])
        await _until(lambda: applier.offsets(0) == [0, 1, 2, 3], "the offered message")
        assert time.monotonic() - offered < 1.5, "the offer waited for the fetch"
        await _write(producer, topic, 0, b"as written")  # offset 3, fetched later

        # The fetch brings offset 4, and not offset 3 again: the consumer moved past it.
        await _write(producer, topic, 0, b"fetched-4")
        await _until(lambda: applier.offsets(0) == [0, 1, 2, 3, 4], "the next fetch")
        assert applier.replays == 0
        assert reader.fetched_again == 0
        assert [v for p, _, v in applier.applied if p == 0][3] == b"as offered"


async def test_an_offer_after_a_transaction_marker_follows_on_from_before_the_marker(
    broker: EmbeddedBroker, topic: str, producer: AIOKafkaProducer
) -> None:
    reader = DirectReader(broker.bootstrap_servers, [topic], 100, within=3.0, fetch_max_wait=3.0)
    async with reading(reader) as applier:
        await _write(producer, topic, 0, b"first")
        await _until(lambda: applier.offsets(0) == [0], "the first message")
        # Offset 1 held the marker of the transaction that wrote offset 0 (as the writer
        # knows): the message at 2 follows on, and is taken without a fetch.
        applier.markers.add(1)
        offered = time.monotonic()
        reader.offer([RawMessage(topic, 0, 2, b"k", b"after a marker")], {(topic, 0, 2): 1})
        await _until(lambda: applier.offsets(0) == [0, 2], "the offered message")
        assert time.monotonic() - offered < 1.5, "the offer waited for the fetch"
        # without that knowledge, a gap is left to the fetch
        reader.offer([RawMessage(topic, 0, 4, b"k", b"after a gap")])
        await asyncio.sleep(0.3)
        assert applier.offsets(0) == [0, 2]


async def test_an_offer_that_does_not_follow_on_is_left_to_the_fetch(
    broker: EmbeddedBroker, topic: str, producer: AIOKafkaProducer
) -> None:
    reader = DirectReader(broker.bootstrap_servers, [topic], 100, within=0.05)
    async with reading(reader) as applier:
        await _write(producer, topic, 1, b"first")
        await _until(lambda: applier.offsets(1) == [0], "the first message")
        # Two written, only the second offered (its predecessor, say, by another path):
        # taking it now would move the progress past the first, which would be lost.
        await _write(producer, topic, 1, b"second")
        later = await _write(producer, topic, 1, b"third")
        reader.offer([later])
        await _until(lambda: applier.offsets(1) == [0, 1, 2], "both, in order")
        # Never applied: a partition this worker does not own, and offers after a
        # rebalance began (they were read under the old assignment).
        reader.offer([RawMessage("elsewhere", 0, 0, b"k", b"x")])
        reader.invalidate()
        reader.offer([RawMessage(topic, 1, 3, b"k", b"stale")])
        await asyncio.sleep(0.5)
        assert applier.offsets(1) == [0, 1, 2]
        assert all(v != b"stale" for _, _, v in applier.applied)


async def test_a_partition_the_fetch_serves_is_not_starved_by_steady_offers(
    broker: EmbeddedBroker, topic: str, producer: AIOKafkaProducer
) -> None:
    # The worker writes to partition 1 without pause and offers each message; partition
    # 0 is written by someone else, so only the fetch brings it. Applying takes a while
    # (a flush), and offers pile up meanwhile: the reader finds offers at every turn.
    reader = DirectReader(broker.bootstrap_servers, [topic], 100, within=0.05)
    async with reading(reader) as applier:
        applier.takes = 0.02
        await _write(producer, topic, 1, b"first")
        await _until(lambda: applier.offsets(1) == [0], "partition 1's first, fetched")

        stop = asyncio.Event()

        async def offer_steadily() -> int:
            offered = 0
            while not stop.is_set():
                reader.offer([await _write(producer, topic, 1, b"mine")])
                offered += 1
            return offered

        writer = asyncio.create_task(offer_steadily())
        try:
            await _until(lambda: len(applier.offsets(1)) > 20, "partition 1's offers")
            for i in range(3):
                await _write(producer, topic, 0, f"theirs-{i}".encode())
            await _until(lambda: applier.offsets(0) == [0, 1, 2], "partition 0, fetched", 10)
            assert not writer.done(), "the offers stopped before partition 0 was applied"
        finally:
            stop.set()
            offered = await writer
        await _until(lambda: len(applier.offsets(1)) == offered + 1, "every offer, once")
        assert applier.offsets(1) == list(range(offered + 1))


async def test_a_new_assignment_is_read_without_waiting_out_the_reader_s_wait(
    broker: EmbeddedBroker, topic: str, producer: AIOKafkaProducer
) -> None:
    # The reader waits up to 30 s for messages; partition 0, all it owns, has none.
    reader = DirectReader(broker.bootstrap_servers, [topic], 100, within=30.0, fetch_max_wait=0.1)
    owned = [0]
    async with reading(reader, lambda: list(owned)) as applier:
        await _write(producer, topic, 0, b"first")
        await _until(lambda: applier.offsets(0) == [0], "partition 0's message")
        await _write(producer, topic, 1, b"not ours yet")
        await asyncio.sleep(0.3)  # the reader is waiting again
        assert applier.offsets(1) == []

        owned.append(1)  # a rebalance gives this worker partition 1
        reader.invalidate()
        await _until(lambda: applier.offsets(1) == [0], "partition 1's message", timeout=10)
