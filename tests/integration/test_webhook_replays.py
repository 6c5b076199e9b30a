"""Replays of signed provider webhooks change nothing, on whichever worker and after a
restart: a Mailgun signature block sent again with a new body, and SendGrid events
without an id sent again within max_age."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from tests.fakes.webhook_signing import mailgun_signed_body, sendgrid_sign
from tests.integration.harness import Deployment, Worker, metric_sum, wait_for
from tests.integration.test_feedback_loop import (
    MAILGUN_KEY,
    configure,
    post,
    start,
    suppressions,
)

JSON = {"Content-Type": "application/json"}


async def replays(worker: Worker, provider: str) -> float:
    m = await worker.metrics()
    return metric_sum(m, "mailstream_webhook_claims_total", provider=provider, result="replayed")


async def traits(worker: Worker, user: str) -> dict[str, Any]:
    status, body = await worker.get(f"/api/users/{user}")
    return dict(body["traits"]) if status == 200 else {}


async def test_a_mailgun_signature_replayed_with_a_new_body_after_a_restart_is_dropped(
    deployment: Deployment,
) -> None:
    _, env = configure(deployment)
    first = await start(deployment, env)
    now = time.time()
    delivered = {
        "id": "mg-delivered",
        "event": "delivered",
        "timestamp": now,
        "recipient": "alice@example.com",
        "user-variables": {"user_id": "alice", "tenant_id": "default", "send_id": "s-1"},
    }
    captured = orjson.loads(mailgun_signed_body(MAILGUN_KEY, delivered, now, "t" * 50))
    assert await post(first, "/webhooks/mailgun", orjson.dumps(captured), JSON) == 200

    async def delivered_noted() -> bool:
        return "last_delivered" in await traits(first, "alice")

    await wait_for(delivered_noted, 20, "the delivery to be applied")
    first.stop()

    # Another worker, with a data directory of its own: what it knows of the first
    # request it has from the changelog.
    second = deployment.worker("b")
    second.env.update(env)
    second.start()
    await deployment.wait_ready([second])
    forged = {
        **captured,
        "event-data": {
            "id": "mg-forged",
            "event": "complained",
            "timestamp": now,
            "recipient": "victim@example.com",
            "user-variables": {"user_id": "victim", "tenant_id": "default"},
        },
    }
    await post(second, "/webhooks/mailgun", orjson.dumps(forged), JSON)

    async def settled() -> bool:
        return await replays(second, "mailgun") > 0 or bool(await suppressions(second, "victim"))

    await wait_for(settled, 20, "the replay to be judged")
    assert await suppressions(second, "victim") == {}, "the replay suppressed another user"
    assert await replays(second, "mailgun") == 1

    # a fresh signature is still taken, with the same body the forger sent
    fresh = mailgun_signed_body(MAILGUN_KEY, forged["event-data"], time.time(), "n" * 50)
    assert await post(second, "/webhooks/mailgun", fresh, JSON) == 200

    async def complained() -> bool:
        return "complaint" in await suppressions(second, "victim")

    await wait_for(complained, 20, "the fresh complaint to be applied")


def soft_bounce(user: str, at: int, reason: str) -> dict[str, Any]:
    """A SendGrid "blocked" bounce without an sg_event_id, as some senders' events come."""
    return {
        "email": f"{user}@example.com",
        "timestamp": at,
        "event": "bounce",
        "type": "blocked",
        "reason": reason,
        "user_id": user,
        "tenant_id": "default",
    }


async def test_sendgrid_events_without_an_id_count_once_however_often_they_come(
    deployment: Deployment,
) -> None:
    private_key, env = configure(deployment)
    worker = await start(deployment, env)
    now = time.time()
    batch = orjson.dumps(
        [
            soft_bounce("bob", int(now) - 60, "mailbox full"),
            soft_bounce("bob", int(now) - 30, "mailbox still full"),
        ]
    )
    headers = sendgrid_sign(private_key, batch, now)
    for _ in range(2):  # the request, then a replay of it
        assert await post(worker, "/webhooks/sendgrid", batch, headers) == 200
    # the same two events in a request signed later (a provider retry, or a replay)
    later = time.time()
    assert (
        await post(worker, "/webhooks/sendgrid", batch, sendgrid_sign(private_key, batch, later))
        == 200
    )

    async def judged() -> bool:
        return await replays(worker, "sendgrid") >= 4 or bool(await suppressions(worker, "bob"))

    await wait_for(judged, 20, "the repeats to be judged")
    m = await worker.metrics()
    assert metric_sum(m, "mailstream_feedback_total", kind="bounce", result="soft_bounce") == 2
    assert await suppressions(worker, "bob") == {}, "two soft bounces counted as three or more"

    # a third, new soft bounce makes three: a hard bounce, as configured
    third = orjson.dumps([soft_bounce("bob", int(now), "mailbox full again")])
    assert (
        await post(worker, "/webhooks/sendgrid", third, sendgrid_sign(private_key, third, now))
        == 200
    )

    async def suppressed() -> bool:
        return "hard_bounce" in await suppressions(worker, "bob")

    await wait_for(suppressed, 20, "three soft bounces to suppress")


async def test_one_signature_sent_to_two_workers_at_once_is_applied_once(
    deployment: Deployment,
) -> None:
    _, env = configure(deployment)
    workers = [deployment.worker(name) for name in ("a", "b")]
    for worker in workers:
        worker.env.update(env)
        worker.start()
    await deployment.wait_ready(workers)
    now = time.time()
    bodies = [
        mailgun_signed_body(
            MAILGUN_KEY,
            {
                "id": f"mg-{user}",
                "event": "complained",
                "timestamp": now,
                "recipient": f"{user}@example.com",
                "user-variables": {"user_id": user, "tenant_id": "default"},
            },
            now,
            "s" * 50,  # the one signature block, with two bodies
        )
        for user in ("carol", "dave")
    ]
    statuses = await asyncio.gather(
        *(post(w, "/webhooks/mailgun", body, JSON) for w, body in zip(workers, bodies, strict=True))
    )
    assert statuses == [200, 200]

    async def both_judged() -> bool:
        dropped = sum([await replays(w, "mailgun") for w in workers])
        applied = [user for user in ("carol", "dave") if await suppressions(workers[0], user)]
        return dropped + len(applied) >= 2

    await wait_for(both_judged, 20, "both requests to be judged")
    applied = [user for user in ("carol", "dave") if await suppressions(workers[0], user)]
    assert len(applied) == 1, f"one signature suppressed {applied}"
    assert sum([await replays(w, "mailgun") for w in workers]) == 1
