"""Feedback keeps arriving while a second worker joins and the first is killed: the
feedback topic is read directly from the progress stored with the users' state, so no
message is lost across the rebalance and the takeover (nothing to read back later)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from aiokafka import AIOKafkaProducer

from mailstream.feedback.normalised import Feedback
from mailstream.kafka.partitioning import partition_for
from tests.integration.harness import PARTITIONS, Deployment, get_users, metric_sum, wait_for

USERS = [f"f{i}" for i in range(24)]
ROUNDS = 40


async def send_feedback(
    deployment: Deployment, quarter: asyncio.Event, killed: asyncio.Event
) -> None:
    """ROUNDS opens per user, ``at`` = the round, paced; the last round also unsubscribes
    every user. A quarter in, ``quarter`` is set; the last quarter waits for ``killed``."""
    producer = AIOKafkaProducer(bootstrap_servers=deployment.broker.bootstrap_servers)
    await producer.start()
    topic = deployment.topics["feedback"]
    try:
        for at in range(1, ROUNDS + 1):
            for user in USERS:
                kinds = ["open", "unsubscribe"] if at == ROUNDS else ["open"]
                for kind in kinds:
                    fb = Feedback(kind, "one-click", at, user_id=user)
                    await producer.send(
                        topic,
                        fb.encode(),
                        key=user.encode(),
                        partition=partition_for(user.encode(), PARTITIONS),
                    )
            await producer.flush()
            if at == ROUNDS // 4:
                quarter.set()
            if at == 3 * ROUNDS // 4:
                await killed.wait()
            await asyncio.sleep(0.15)
    finally:
        await producer.stop()


async def test_feedback_across_a_rebalance_and_a_takeover_is_never_lost(
    deployment: Deployment,
) -> None:
    a = deployment.worker("a").start()
    await deployment.wait_ready([a])
    quarter, killed = asyncio.Event(), asyncio.Event()
    sending = asyncio.create_task(send_feedback(deployment, quarter, killed))
    try:
        await quarter.wait()
        b = deployment.worker("b").start()  # a rebalance while feedback flows

        async def b_owns_some() -> bool:
            h = await b.health()
            return bool(h and h["ready"] and h["partitions"])

        await wait_for(b_owns_some, 90, "the second worker to own partitions")
        a.kill(signal.SIGKILL)  # and a takeover from the changelog
        killed.set()
        await sending
    finally:
        killed.set()
        if not sending.done():
            sending.cancel()
    await deployment.wait_ready([b])

    async def all_applied() -> Any:
        found = await get_users(b, [("default", u) for u in USERS])
        return all(
            status == 200
            and body["traits"].get("last_open") == ROUNDS
            and "unsubscribe" in dict(body["suppressions"])
            for status, body in found.values()
        )

    await wait_for(all_applied, 60, "every user's last feedback on the surviving worker")
    m = await b.metrics()
    # the last round was sent after the kill: b applied each unsubscribe once
    assert metric_sum(m, "mailstream_feedback_total", kind="unsubscribe") == len(USERS)
