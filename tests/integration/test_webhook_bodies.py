"""Signed webhooks whose body arrives in pieces are read whole by a real worker: a
512 KiB SendGrid batch, and bodies sent chunked in parts 50 ms apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson

from tests.fakes.webhook_signing import mailgun_signed_body, postmark_auth, sendgrid_sign
from tests.integration.harness import Deployment, Worker, wait_for
from tests.integration.test_feedback_loop import (
    MAILGUN_KEY,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    configure,
    start,
    suppressions,
)


async def _in_parts(body: bytes, parts: int, pause: float) -> AsyncIterator[bytes]:
    size = -(-len(body) // parts)
    for index in range(0, len(body), size):
        if index:
            await asyncio.sleep(pause)
        yield body[index : index + size]


async def _post(worker: Worker, path: str, data: object, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(worker.url + path, data=data, headers=headers) as resp:
            await resp.read()
            return resp.status


def _sendgrid_batch(now: float, size: int) -> bytes:
    """About ``size`` bytes of events SendGrid sends but mailstream ignores, then a hard
    bounce for the user "last-in-batch"."""
    filler = {
        "email": "someone@example.com",
        "timestamp": int(now),
        "event": "processed",
        "smtp-id": "<" + "x" * 200 + "@example.com>",
        "sg_message_id": "m" * 60,
    }
    events = [dict(filler, sg_event_id=f"filler-{i}") for i in range(size // 330)]
    events.append(
        {
            "email": "last@example.com",
            "timestamp": int(now),
            "event": "bounce",
            "type": "bounce",
            "reason": "550 5.1.1 no such user",
            "sg_event_id": "the-bounce",
            "user_id": "last-in-batch",
            "tenant_id": "default",
        }
    )
    return orjson.dumps(events)


async def test_bodies_that_arrive_in_pieces_are_verified_and_applied(
    deployment: Deployment,
) -> None:
    private_key, env = configure(deployment)
    worker = await start(deployment, env)
    now = time.time()

    batch = _sendgrid_batch(now, 512 * 1024)
    assert 512 * 1024 <= len(batch) < 1_000_000
    signed = sendgrid_sign(private_key, batch, now) | {"Content-Length": str(len(batch))}
    # in 16 parts 20 ms apart, with its length declared, as a slow link delivers it
    parts = _in_parts(batch, 16, 0.02)
    assert await _post(worker, "/webhooks/sendgrid", parts, signed) == 200

    complaint = {
        "id": "mg-chunked",
        "event": "complained",
        "timestamp": now,
        "recipient": "chunked@example.com",
        "user-variables": {"user_id": "chunked", "tenant_id": "default"},
        "padding": "p" * 5000,  # a 5 KB body
    }
    body = mailgun_signed_body(MAILGUN_KEY, complaint, now, "token-chunked")
    json = {"Content-Type": "application/json"}
    assert await _post(worker, "/webhooks/mailgun", _in_parts(body, 2, 0.05), json) == 200

    unsubscribe = orjson.dumps(
        {
            "RecordType": "SubscriptionChange",
            "MessageID": "pm-chunked",
            "Recipient": "pm@example.com",
            "ChangedAt": "2026-11-22T10:00:00Z",
            "SuppressSending": True,
            "SuppressionReason": "ManualSuppression",
            "Metadata": {"user_id": "pm-chunked", "tenant_id": "default"},
            "Padding": "p" * 5000,
        }
    )
    auth = postmark_auth(POSTMARK_USER, POSTMARK_PASSWORD)
    assert await _post(worker, "/webhooks/postmark", _in_parts(unsubscribe, 2, 0.05), auth) == 200

    async def all_applied() -> bool:
        return (
            "hard_bounce" in await suppressions(worker, "last-in-batch")
            and "complaint" in await suppressions(worker, "chunked")
            and "unsubscribe" in await suppressions(worker, "pm-chunked")
        )

    await wait_for(all_applied, 20, "the three webhooks to be applied")
