"""An upstream transactional producer on Apache Kafka: the worker applies exactly the
committed events and feedback, takes the gaps that commit and abort markers leave in the
offsets for what they are (no hole, no record), and its lag reaches 0.

Apache Kafka only: the embedded broker (tansu) has no transactions.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from mailstream.feedback.normalised import Feedback
from mailstream.kafka.partitioning import partition_for
from mailstream.producer import make_event
from tests.integration.harness import PARTITIONS, Deployment, metric_sum, wait_for


class Upstream:
    """A transactional producer writing keyed records where mailstream's partitioner puts
    them; each call is one transaction, committed or aborted."""

    def __init__(self, servers: str) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=servers, transactional_id=f"upstream-{uuid.uuid4().hex[:8]}"
        )

    async def write(self, records: list[tuple[str, bytes, bytes]], commit: bool) -> None:
        await self.producer.begin_transaction()
        for topic, key, value in records:
            await self.producer.send(
                topic, value, key=key, partition=partition_for(key, PARTITIONS)
            )
        if commit:
            await self.producer.commit_transaction()
        else:
            await self.producer.abort_transaction()


def identify(topic: str, user: str) -> tuple[str, bytes, bytes]:
    event = make_event("identify", user, {"email": f"{user}@example.com"})
    return topic, user.encode(), orjson.dumps(event)


def unsubscribe(topic: str, user: str) -> tuple[str, bytes, bytes]:
    fb = Feedback("unsubscribe", "one-click", int(time.time() * 1000), user_id=user)
    return topic, user.encode(), fb.encode()


async def last_stable_offsets(servers: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


@pytest.mark.only_on("kafka", reason="the embedded broker has no transactions")
async def test_only_committed_records_are_applied_and_the_lag_reaches_zero(
    deployment: Deployment, broker: Any
) -> None:
    events, feedback = deployment.topics["events"], deployment.topics["feedback"]
    worker = deployment.worker("a").start()
    try:
        await deployment.wait_ready([worker])
        upstream = Upstream(broker.bootstrap_servers)
        await upstream.producer.start()
        committed = [f"c{i}" for i in range(24)]
        aborted = [f"a{i}" for i in range(8)]
        try:
            # Interleaved: every committed transaction is followed by a marker, every
            # aborted one leaves its records and a marker the worker must step over.
            for i in range(0, len(committed), 3):
                await upstream.write([identify(events, u) for u in committed[i : i + 3]], True)
                if i // 3 < len(aborted):
                    await upstream.write([identify(events, aborted[i // 3])], False)
            await upstream.write([unsubscribe(feedback, u) for u in committed[:4]], True)
            await upstream.write([unsubscribe(feedback, u) for u in committed[4:8]], False)
            await upstream.write([unsubscribe(feedback, committed[8])], True)
        finally:
            await upstream.producer.stop()

        async def caught_up() -> Any:
            status, board = await worker.get("/api/dashboard")
            lags = board.get("lag", {}) if status == 200 else {}
            done = len(lags) == PARTITIONS and all(p["lag"] == 0 for p in lags.values())
            return done and board

        board = await wait_for(caught_up, 60, "the events lag to reach 0")
        # The lag is 0 against the topic's last stable offsets, markers included: progress
        # is the consumer position, not the last record's offset + 1.
        ends = await last_stable_offsets(broker.bootstrap_servers, events)
        assert {int(p): lag["applied"] for p, lag in board["lag"].items()} == ends
        assert sum(ends.values()) > len(committed) + len(aborted)  # markers take offsets

        async def unsubscribed(user: str) -> bool:
            status, body = await worker.get(f"/api/users/{user}")
            return status == 200 and "unsubscribe" in dict(body["suppressions"])

        async def feedback_applied() -> bool:
            return await unsubscribed(committed[8])

        await wait_for(feedback_applied, 30, "the last committed feedback")
        for user in committed:
            status, _ = await worker.get(f"/api/users/{user}")
            assert status == 200, user
        for user in aborted:
            status, _ = await worker.get(f"/api/users/{user}")
            assert status == 404, f"{user} was written in an aborted transaction"
        assert [u for u in committed[:9] if await unsubscribed(u)] == [
            *committed[:4],
            committed[8],
        ]
        m = await worker.metrics()
        assert metric_sum(m, "mailstream_events_consumed_total") == len(committed)
        assert metric_sum(m, "mailstream_feedback_total") == 5
        assert metric_sum(m, "mailstream_events_replayed_total") == 0
    finally:
        worker.stop()
