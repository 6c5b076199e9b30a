"""Provider webhooks and one-click unsubscribes on a real worker: they suppress the right
mail, and a bad or forged request changes nothing."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fakes.webhook_signing import (
    mailgun_signed_body,
    postmark_auth,
    sendgrid_keypair,
    sendgrid_sign,
)
from tests.integration.harness import Deployment, Worker, metric_sum, read_json, wait_for

MAILGUN_KEY = "key-for-mailgun-webhooks-in-tests"
POSTMARK_USER, POSTMARK_PASSWORD = "hooks", "hook-password-in-tests"
FLOWS: dict[str, Any] = {
    "hello": {
        "trigger": {"event": "signup"},
        "entry": "always",
        "steps": [
            {"send": "welcome", "category": "transactional"},
            {"send": "tips", "category": "marketing"},
        ],
    },
    "receipt": {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [{"send": "order_receipt", "category": "transactional"}],
    },
}


def configure(deployment: Deployment) -> tuple[Any, dict[str, str]]:
    """Every provider's webhook on, with fresh keys; the worker env that holds them."""
    private_key, public_key = sendgrid_keypair()
    deployment.overrides["workflows"] = FLOWS
    deployment.overrides["webhooks"] = {"sendgrid": {}, "mailgun": {}, "postmark": {}}
    env = {
        "SENDGRID_WEBHOOK_PUBLIC_KEY": public_key,
        "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
        "POSTMARK_WEBHOOK_USERNAME": POSTMARK_USER,
        "POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
    }
    return private_key, env


async def start(deployment: Deployment, env: dict[str, str]) -> Worker:
    worker = deployment.worker("a")
    worker.env.update(env)
    worker.start()
    await deployment.wait_ready([worker])
    return worker


async def post(worker: Worker, path: str, body: bytes | Any, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(worker.url + path, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status


async def identify(deployment: Deployment, *users: str) -> None:
    async with deployment.producer() as p:
        for user in users:
            traits = {"email": f"{user}@example.com", "consent": {"marketing": True}}
            await p.identify(user, traits)
        await p.flush()


async def suppressions(worker: Worker, user: str) -> dict[str, Any]:
    status, body = await worker.get(f"/api/users/{user}")
    return dict(body["suppressions"]) if status == 200 else {}


async def test_a_hard_bounce_and_a_complaint_stop_all_mail_to_that_user(
    deployment: Deployment,
) -> None:
    private_key, env = configure(deployment)
    worker = await start(deployment, env)
    await identify(deployment, "bouncer", "complainer", "happy")
    now = time.time()
    bounce = orjson.dumps(
        [
            {
                "email": "bouncer@example.com",
                "timestamp": int(now),
                "event": "bounce",
                "type": "bounce",
                "reason": "550 5.1.1 The email account does not exist",
                "sg_event_id": "sg-1",
                "user_id": "bouncer",
                "tenant_id": "default",
                "send_id": "earlier-send",
            }
        ]
    )
    assert (
        await post(worker, "/webhooks/sendgrid", bounce, sendgrid_sign(private_key, bounce, now))
        == 200
    )
    complaint = {
        "id": "mg-1",
        "event": "complained",
        "timestamp": now,
        "recipient": "complainer@example.com",
        "user-variables": {"user_id": "complainer", "tenant_id": "default", "send_id": "x"},
    }
    body = mailgun_signed_body(MAILGUN_KEY, complaint, now, "token-1")
    headers = {"Content-Type": "application/json"}
    assert await post(worker, "/webhooks/mailgun", body, headers) == 200

    async def both_suppressed() -> bool:
        return "hard_bounce" in await suppressions(worker, "bouncer") and "complaint" in (
            await suppressions(worker, "complainer")
        )

    await wait_for(both_suppressed, 20, "the bounce and the complaint to be applied")
    async with deployment.producer() as p:
        for user in ("bouncer", "complainer", "happy"):
            await p.emit("signup", user)
            await p.emit("order_completed", user, {"order_id": f"o-{user}", "total": 1})
        await p.flush()

    transactional = await read_json(deployment, deployment.topics["sends_transactional"], 2, 30)
    marketing = await read_json(deployment, deployment.topics["sends_marketing"], 1, 10)
    assert {c["user_id"] for c in transactional + marketing} == {"happy"}
    assert len(transactional) == 2 and len(marketing) == 1
    # the same webhook again (a provider retry, or a replay) is taken, and dropped by the
    # replay guard: nothing changes
    assert await post(worker, "/webhooks/mailgun", body, headers) == 200

    async def dropped() -> float:
        m = await worker.metrics()
        return metric_sum(m, "mailstream_webhook_claims_total", result="replayed")

    assert await wait_for(dropped, 20, "the replay to be dropped") == 1


async def test_a_bounce_that_arrives_before_the_user_is_kept(deployment: Deployment) -> None:
    private_key, env = configure(deployment)
    worker = await start(deployment, env)
    now = time.time()
    bounce = orjson.dumps(
        [
            {
                "email": "early@example.com",
                "timestamp": int(now),
                "event": "bounce",
                "type": "bounce",
                "sg_event_id": "sg-early",
                "user_id": "early",
                "tenant_id": "default",
            }
        ]
    )
    headers = sendgrid_sign(private_key, bounce, now)
    assert await post(worker, "/webhooks/sendgrid", bounce, headers) == 200

    async def suppressed() -> bool:
        return "hard_bounce" in await suppressions(worker, "early")

    await wait_for(suppressed, 20, "the bounce to start the user's record")
    await identify(deployment, "early")
    async with deployment.producer() as p:
        await p.emit("signup", "early")
        await p.flush()

    async def dropped() -> bool:
        status, body = await worker.get("/api/users/early")
        return [d["reason"] for d in body["send_decisions"]] == ["suppressed", "suppressed"]

    await wait_for(dropped, 20, "both sends to be dropped as suppressed")
    status, body = await worker.get("/api/users/early", full="1")
    assert body["traits"]["email"] == "early@example.com", "the identify filled it in"


async def test_the_link_in_a_delivered_email_unsubscribes_from_marketing_only(
    deployment: Deployment,
) -> None:
    _, env = configure(deployment)
    worker = await start(deployment, env)
    await identify(deployment, "reader")
    async with deployment.producer() as p:
        await p.emit("signup", "reader")
        await p.flush()

    outbox = deployment.root / "outbox"

    async def delivered_tips() -> Path | None:
        for path in outbox.glob("*/*.eml"):
            if "List-Unsubscribe" in path.read_text():
                return path
        return None

    path = await wait_for(delivered_tips, 30, "the marketing email to be delivered")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    link = str(message["List-Unsubscribe"]).split(",")[0].strip().strip("<>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert link.startswith(worker.url + "/unsubscribe/")

    async with aiohttp.ClientSession() as session:
        async with session.get(link) as resp:
            assert resp.status == 200 and "<form" in await resp.text()
        forged = link[:-3] + ("abc" if not link.endswith("abc") else "xyz")
        async with session.post(forged, data={"List-Unsubscribe": "One-Click"}) as resp:
            assert resp.status == 403
        bad = {"Content-Type": ";0*"}  # a header Python's parser raises on: 400, no unsubscribe
        async with session.post(link, data=b"List-Unsubscribe=One-Click", headers=bad) as resp:
            assert resp.status == 400
        for _ in range(2):  # twice is harmless
            async with session.post(link, data={"List-Unsubscribe": "One-Click"}) as resp:
                assert resp.status == 200

    async def unsubscribed() -> bool:
        return "unsubscribe" in await suppressions(worker, "reader")

    await wait_for(unsubscribed, 20, "the unsubscribe to be applied")
    assert set(await suppressions(worker, "reader")) == {"unsubscribe"}
    async with deployment.producer() as p:
        await p.emit("signup", "reader")
        await p.emit("order_completed", "reader", {"order_id": "o-1", "total": 1})
        await p.flush()
    transactional = await read_json(deployment, deployment.topics["sends_transactional"], 3, 30)
    assert sorted(c["template"] for c in transactional) == ["order_receipt", "welcome", "welcome"]
    marketing = await read_json(deployment, deployment.topics["sends_marketing"], 1, 5)
    assert len(marketing) == 1, "only the tips sent before the unsubscribe"


async def test_engagement_from_postmark_sets_traits(deployment: Deployment) -> None:
    _, env = configure(deployment)
    worker = await start(deployment, env)
    await identify(deployment, "opener")
    opened = orjson.dumps(
        {
            "RecordType": "Open",
            "MessageID": "pm-1",
            "Recipient": "opener@example.com",
            "ReceivedAt": "2026-11-22T10:00:00Z",
            "Metadata": {"user_id": "opener", "tenant_id": "default", "send_id": "s-1"},
        }
    )
    assert (
        await post(worker, "/webhooks/postmark", opened, {"Content-Type": "application/json"})
        == 401
    )
    good = postmark_auth(POSTMARK_USER, POSTMARK_PASSWORD)
    assert await post(worker, "/webhooks/postmark", opened, good) == 200

    async def has_trait() -> bool:
        status, body = await worker.get("/api/users/opener")
        return status == 200 and "last_open" in body["traits"]

    await wait_for(has_trait, 20, "last_open to be set")


def _fuzz(url: str) -> None:
    """Random bodies and headers at each webhook: only 4xx answers."""

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        provider=st.sampled_from(["sendgrid", "mailgun", "postmark", "nope"]),
        body=st.one_of(
            st.binary(max_size=2000),
            st.recursive(
                st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=50),
                lambda inner: (
                    st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=20), inner, max_size=5)
                ),
                max_leaves=20,
            ).map(lambda doc: orjson.dumps(doc)),
        ),
        headers=st.dictionaries(
            st.sampled_from(
                [
                    "X-Twilio-Email-Event-Webhook-Signature",
                    "X-Twilio-Email-Event-Webhook-Timestamp",
                    "Authorization",
                    "Content-Type",
                ]
            ),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
        ),
    )
    # a Content-Type that Python's header parser raises on
    @example(provider="sendgrid", body=b"[]", headers={"Content-Type": ";0*"})
    def check(provider: str, body: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(
            f"{url}/webhooks/{provider}", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert 400 <= status < 500, status

    check()


async def test_random_webhook_requests_get_4xx_and_change_nothing(deployment: Deployment) -> None:
    _, env = configure(deployment)
    worker = await start(deployment, env)
    await identify(deployment, "bystander")
    await asyncio.to_thread(_fuzz, worker.url)
    big = b"[" + b"0," * 505_000 + b"0]"  # over the 1,000,000-byte limit, under 1 MiB
    assert (
        await post(worker, "/webhooks/sendgrid", big, {"Content-Type": "application/json"}) == 413
    )
    assert worker.alive()
    assert await suppressions(worker, "bystander") == {}
    m = await worker.metrics()
    assert metric_sum(m, "mailstream_webhooks_total", result="accepted") == 0
    assert metric_sum(m, "mailstream_feedback_total") == 0
    letters = await deployment.read_topic(deployment.topics["feedback"], 0, timeout=2)
    assert letters == []
