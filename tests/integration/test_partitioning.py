"""A producer with another partitioner (confluent-kafka's default, CRC32) on a real
worker: the user's events are moved to the partition where the engine keeps the user, so
an unsubscribe made through the engine holds and the user's sends have their records."""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from typing import Any

import aiohttp
import orjson
from confluent_kafka import Producer

from mailstream.delivery.unsubscribe_links import Unsubscribe, UnsubscribeTokens
from mailstream.feedback.normalised import UNSUBSCRIBE, Feedback
from mailstream.kafka.partitioning import partition_for
from tests.integration.harness import (
    PARTITIONS,
    UNSUBSCRIBE_SECRET,
    Deployment,
    Worker,
    metric_sum,
    read_json,
    wait_for,
)

FLOWS: dict[str, Any] = {
    "hello": {
        "trigger": {"event": "signup"},
        "entry": "always",
        "steps": [
            {"send": "welcome", "category": "transactional"},
            {"send": "tips", "category": "marketing"},
        ],
    },
}


def split_user() -> str:
    """A user id that librdkafka's default partitioner puts outside its murmur2 partition."""
    for n in range(1000):
        user = f"reader-{n}"
        if zlib.crc32(user.encode()) % PARTITIONS != partition_for(user.encode(), PARTITIONS):
            return user
    raise AssertionError("no user id found whose partitions differ")


def produce_raw(servers: str, topic: str, key: bytes, value: bytes) -> int:
    """One message through confluent-kafka's Producer as configured by default; returns
    the partition it landed in."""
    landed: list[int] = []

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        landed.append(msg.partition())

    producer = Producer({"bootstrap.servers": servers})
    producer.produce(topic, value, key=key, on_delivery=delivered)
    assert producer.flush(10) == 0, "confluent-kafka did not deliver the message"
    return landed[0]


def produce(servers: str, topic: str, user: str, event_type: str, payload: Any) -> int:
    """One event through confluent-kafka; returns the partition it landed in."""
    event = {
        "event_id": uuid.uuid4().hex,
        "event_type": event_type,
        "user_id": user,
        "timestamp": int(time.time() * 1000),
        "payload": payload,
    }
    return produce_raw(servers, topic, user.encode(), orjson.dumps(event))


async def user_page(worker: Worker, user: str) -> dict[str, Any]:
    status, body = await worker.get(f"/api/users/{user}", full="1")
    return body if status == 200 else {}


async def test_an_unsubscribe_holds_for_a_user_whose_events_come_from_confluent_kafka(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = FLOWS
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    servers, events = deployment.broker.bootstrap_servers, deployment.topics["events"]
    user = split_user()
    crc32, murmur2 = (
        zlib.crc32(user.encode()) % PARTITIONS,
        partition_for(user.encode(), PARTITIONS),
    )
    assert crc32 != murmur2

    traits = {"email": f"{user}@example.com", "consent": {"marketing": True}}
    landed = await asyncio.to_thread(produce, servers, events, user, "identify", traits)
    assert landed == crc32, "confluent-kafka's default partitioner is CRC32"

    async def identified() -> bool:
        return (await user_page(worker, user)).get("traits", {}).get("email") == traits["email"]

    await wait_for(identified, 15, "the identify to be applied")

    # One-click unsubscribe through the worker, as the link in a marketing email does.
    token = UnsubscribeTokens(UNSUBSCRIBE_SECRET).make(
        Unsubscribe("default", user, "marketing", "earlier-send")
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{worker.url}/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
        ) as resp:
            assert resp.status == 200

    async def unsubscribe_applied() -> bool:
        m = await worker.metrics()
        return metric_sum(m, "mailstream_feedback_total", result="unsubscribe") == 1

    await wait_for(unsubscribe_applied, 15, "the unsubscribe to be applied")

    await asyncio.to_thread(produce, servers, events, user, "signup", {})
    outbox = deployment.root / "outbox"

    async def mailed() -> list[str]:
        return [p.read_text() for p in outbox.glob("*/*.eml")]

    await wait_for(mailed, 20, "the welcome to be delivered")
    marketing = await read_json(deployment, deployment.topics["sends_marketing"], 1, 3)
    assert marketing == [], "no marketing send command after the unsubscribe"
    mails = await mailed()
    assert len(mails) == 1 and "List-Unsubscribe" not in mails[0], "only the welcome delivered"

    # One user record, unsubscribed, with the welcome's delivery record beside it.
    async def recorded() -> dict[str, Any]:
        page = await user_page(worker, user)
        return page if any(d["state"] == "sent" for d in page.get("deliveries", ())) else {}

    page = await wait_for(recorded, 10, "the welcome's delivery record on the user page")
    assert page["traits"]["email"] == traits["email"]
    assert set(page["suppressions"]) == {"unsubscribe"}
    decisions = {d["template"]: (d["decision"], d["reason"]) for d in page["send_decisions"]}
    assert decisions["tips"] == ("drop", "suppressed")
    assert [(d["category"], d["state"]) for d in page["deliveries"]] == [("transactional", "sent")]

    metrics = await worker.metrics()
    assert metric_sum(metrics, "mailstream_events_total", outcome="rerouted") == 2
    assert metric_sum(metrics, "mailstream_events_total", outcome="processed") == 2
    consumed = metric_sum(metrics, "mailstream_events_consumed_total")
    assert consumed == 4, "each event consumed where it landed and again where it was moved"
    status, stats = await worker.get("/api/local/stats")
    assert status == 200
    ledger = stats["ledger"]
    assert ledger["rerouted"] == 2 and ledger["processed"] == 2
    assert ledger["events"] == 2, "each produced event once, in its final outcome"
    assert stats["totals"]["rerouted"] == 2


async def test_feedback_written_outside_its_users_partition_is_applied_in_it(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = FLOWS
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    user = split_user()
    async with deployment.producer() as p:  # murmur2: the user's partition
        await p.identify(user, {"email": f"{user}@example.com", "consent": {"marketing": True}})
        await p.flush()

    async def identified() -> bool:
        return "email" in (await user_page(worker, user)).get("traits", {})

    await wait_for(identified, 15, "the identify to be applied")
    # An unsubscribe written by a tool with confluent-kafka's default partitioner.
    fb = Feedback(UNSUBSCRIBE, "one-click", int(time.time() * 1000), user_id=user, event_id="u1")
    servers = deployment.broker.bootstrap_servers
    feedback_topic = deployment.topics["feedback"]
    landed = await asyncio.to_thread(
        produce_raw, servers, feedback_topic, user.encode(), fb.encode()
    )
    assert landed != partition_for(user.encode(), PARTITIONS)

    async def unsubscribe_applied() -> bool:
        m = await worker.metrics()
        return metric_sum(m, "mailstream_feedback_total", result="unsubscribe") == 1

    await wait_for(unsubscribe_applied, 15, "the unsubscribe to be applied")
    async with deployment.producer() as p:
        await p.emit("signup", user)
        await p.flush()
    transactional = await read_json(deployment, deployment.topics["sends_transactional"], 1, 15)
    assert [c["template"] for c in transactional] == ["welcome"]
    marketing = await read_json(deployment, deployment.topics["sends_marketing"], 1, 3)
    assert marketing == [], "no marketing send command after the unsubscribe"
    page = await user_page(worker, user)
    assert set(page["suppressions"]) == {"unsubscribe"} and "email" in page["traits"]
    m = await worker.metrics()
    assert metric_sum(m, "mailstream_feedback_total", result="rerouted") == 1
