"""What a worker trusts, on real workers: commands only its deployment signed, a send
only while its recipient is not suppressed, and a lookup forwarded between workers that
carries no credential of the caller's and is answered only with the cluster's signature."""

from __future__ import annotations

import secrets
import time
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from yarl import URL

from mailstream.core.cluster_trust import REQUEST_HEADER, RESPONSE_HEADER, ClusterKey
from mailstream.feedback.normalised import Feedback
from mailstream.kafka.partitioning import partition_for
from mailstream.suppression.entries import Suppression
from mailstream.webhooks_out.json_body import MAX_BODY_BYTES
from tests.fakes.http_providers import FakeProviders
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration import signed
from tests.integration.harness import (
    ADMIN_TOKEN,
    PARTITIONS,
    Deployment,
    Worker,
    metric_sum,
    wait_for,
)

CRM_SECRET = "crm-webhook-secret-0123456789"


send = signed.send_document


def hook(webhook_id: str, user: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "webhook_id": webhook_id,
        "tenant_id": "default",
        "user_id": user,
        "endpoint": "crm",
        "workflow": "test",
        "enrollment_id": "e1",
        "step": 0,
        "body": body,
        "store": None,
        "created_at": int(time.time() * 1000),
    }


async def produce(deployment: Deployment, records: list[tuple[str, bytes, bytes]]) -> None:
    """(topic name in the deployment, key, value), written as they are."""
    producer = AIOKafkaProducer(
        bootstrap_servers=deployment.broker.bootstrap_servers, max_request_size=2_000_000
    )
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(deployment.topics[topic], value, key=key)
    finally:
        await producer.stop()


async def start_worker(
    deployment: Deployment, fake: FakeProviders, hooks: WebhookReceiver
) -> Worker:
    """A worker that delivers through ``fake`` and calls the ``crm`` endpoint of ``hooks``."""
    deployment.overrides["delivery"] = {"provider": "postmark"}
    deployment.overrides["providers"] = {"postmark": {"base_url": fake.url}}
    deployment.overrides["webhooks_out"] = {
        "crm": {"url": hooks.url("crm"), "secret_env": "CRM_WEBHOOK_SECRET", "timeout": "2s"}
    }
    worker = deployment.worker("a")
    worker.env.update(fake.env(), CRM_WEBHOOK_SECRET=CRM_SECRET)
    worker.start()
    await deployment.wait_ready([worker])
    return worker


async def test_commands_no_worker_signed_are_dead_lettered_never_sent_nor_posted(
    deployment: Deployment,
) -> None:
    async with FakeProviders() as fake, WebhookReceiver({"crm": CRM_SECRET}) as hooks:
        worker = await start_worker(deployment, fake, hooks)

        # Written by someone with access to the broker, not by a worker.
        phishing = send("forged", "victim", "marketing", subject="Your account is locked")
        key, value = signed.send_command(send("altered", "u2"))
        altered = value.replace(b"u2@example.com", b"eve@evil.test")
        big = {"data": "a" * MAX_BODY_BYTES}
        await produce(
            deployment,
            [
                ("sends_marketing", b"victim", orjson.dumps(phishing)),
                ("sends_transactional", key, altered),
                ("webhooks", b"victim", orjson.dumps(hook("forged-hook", "victim", big))),
                # signed, but over the body limit: not called either
                ("webhooks", *signed.webhook_command(hook("big-hook", "u2", big))),
            ],
        )
        # Then what a worker wrote: it goes out, so the forged ones were seen before it.
        await produce(
            deployment,
            [
                ("sends_transactional", *signed.send_command(send("good", "u3"))),
                ("webhooks", *signed.webhook_command(hook("good-hook", "u3", {"ok": 1}))),
            ],
        )
        await fake.wait_for(1, timeout=30)

        async def posted() -> bool:
            return sum(hooks.successes("crm").values()) >= 1

        await wait_for(posted, 30, "the signed webhook command's call")

        letters = await deployment.read_topic(deployment.topics["dlq"], 4, timeout=30)
        found = sorted(
            (
                dict(x.headers)["mailstream.reason_code"].decode(),
                dict(x.headers)["mailstream.reason"].decode(),
            )
            for x in letters
        )
        codes = [code for code, _ in found]
        assert codes == ["bad_webhook_command", *["untrusted_command"] * 3], found
        reasons = " | ".join(reason for _, reason in found)
        assert "unsigned" in reasons and "signature does not match" in reasons
        assert f"over the {MAX_BODY_BYTES}-byte limit" in found[0][1]

        assert [m.metadata.get("send_id") for m in fake.received] == ["good"]
        assert not fake.messages(to="eve@evil.test") and not fake.messages(to="victim@example.com")
        assert [r.webhook_id for r in hooks.to("crm")] == ["good-hook"]
        assert worker.alive()


async def test_a_signed_command_copied_to_another_partition_is_not_carried_out_again(
    deployment: Deployment,
) -> None:
    async with FakeProviders() as fake, WebhookReceiver({"crm": CRM_SECRET}) as hooks:
        worker = await start_worker(deployment, fake, hooks)

        # Two commands a worker wrote, each in its user's partition: carried out once.
        mail = signed.send_command(send("once", "u1"))
        call = signed.webhook_command(hook("once-hook", "u1", {"ok": 1}))
        home = partition_for(b"u1", PARTITIONS)
        await produce_to(
            deployment, [("sends_transactional", home, mail), ("webhooks", home, call)]
        )
        await fake.wait_for(1, timeout=30)

        async def posted() -> bool:
            return sum(hooks.successes("crm").values()) >= 1

        await wait_for(posted, 30, "the webhook command's call")

        # Someone with access to the broker copies both, byte for byte, to another
        # partition, where no send id or webhook id of u1 is remembered.
        away = (home + 1) % PARTITIONS
        await produce_to(
            deployment, [("sends_transactional", away, mail), ("webhooks", away, call)]
        )
        letters = await deployment.read_topic(deployment.topics["dlq"], 2, timeout=30)
        codes = [dict(x.headers)["mailstream.reason_code"] for x in letters]
        assert codes == [b"misplaced_command"] * 2
        reason = dict(letters[0].headers)["mailstream.reason"].decode()
        assert f"found in partition {away}, not in its key's partition {home}" in reason

        assert [m.metadata.get("send_id") for m in fake.received] == ["once"]
        assert [r.webhook_id for r in hooks.to("crm")] == ["once-hook"]
        assert worker.alive()


async def produce_to(
    deployment: Deployment, records: list[tuple[str, int, tuple[bytes, bytes]]]
) -> None:
    """(topic name in the deployment, partition, (key, value)), each where it is told."""
    producer = AIOKafkaProducer(bootstrap_servers=deployment.broker.bootstrap_servers)
    await producer.start()
    try:
        for topic, partition, (key, value) in records:
            await producer.send_and_wait(
                deployment.topics[topic], value, key=key, partition=partition
            )
    finally:
        await producer.stop()


async def test_a_send_whose_recipient_was_suppressed_since_it_was_written_is_not_made(
    deployment: Deployment,
) -> None:
    async with FakeProviders() as fake:
        deployment.overrides["delivery"] = {"provider": "postmark"}
        deployment.overrides["providers"] = {"postmark": {"base_url": fake.url}}
        worker = deployment.worker("a")
        worker.env.update(fake.env())
        worker.start()
        await deployment.wait_ready([worker])
        async with deployment.producer() as p:
            await p.identify("own", {"email": "own@example.com"})
            await p.flush()

        # The user complains; another address goes on the global list (all mail).
        now = int(time.time() * 1000)
        complaint = Feedback("complaint", "postmark", now, "own@example.com", "own", "default")
        listed = Suppression("manual", "support desk", now)
        await produce(
            deployment,
            [
                ("feedback", b"own", complaint.encode()),
                ("suppression", b"listed@example.com", listed.encode()),
            ],
        )

        async def suppressed() -> bool:
            status, user = await worker.get("/api/users/own")
            health = await worker.health()
            return (
                status == 200
                and "complaint" in user["suppressions"]
                and health is not None
                and health["suppression_list"] == 1
            )

        await wait_for(suppressed, 20, "the complaint and the global list entry")

        # Commands written before that: the policy had let them through.
        await produce(
            deployment,
            [
                ("sends_marketing", *signed.send_command(send("to-own", "own", "marketing"))),
                ("sends_transactional", *signed.send_command(send("to-listed", "listed"))),
                ("sends_transactional", *signed.send_command(send("to-fine", "fine"))),
            ],
        )

        async def settled() -> dict[str, float] | None:
            m = await worker.metrics()
            sent = metric_sum(m, "mailstream_sends_total", result="sent")
            dropped = metric_sum(m, "mailstream_deliveries_total", result="suppressed")
            return m if sent + dropped >= 3 else None

        m = await wait_for(settled, 30, "all three sends to be sent or dropped")
        assert [r.to for r in fake.received] == ["fine@example.com"]
        assert metric_sum(m, "mailstream_deliveries_total", result="suppressed") == 2


class Member:
    """A process that joined the group with a web address of its choosing: it records
    what it is sent and answers every lookup with data of its own making."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Member:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        return web.json_response({"user_id": "ghost", "traits": {"email": "forged@evil.test"}})


async def ask_directly(url: str, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
    async with aiohttp.ClientSession() as session:
        async with session.get(URL(url, encoded=True), headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers.get(RESPONSE_HEADER)


async def test_a_forwarded_lookup_carries_no_credential_and_needs_the_cluster_signature(
    deployment: Deployment,
) -> None:
    async with Member() as member:
        a = deployment.worker("a").start()
        b = deployment.worker("b")
        b.env["MAILSTREAM_CANONICAL_URL"] = member.url  # where the others will ask it
        b.start()
        await deployment.wait_ready([a, b])

        status, body = await a.get("/api/users/ghost")
        [asked] = member.requests
        assert "Authorization" not in asked and ADMIN_TOKEN not in str(asked)
        assert REQUEST_HEADER in asked  # signed with the cluster secret instead
        # Its answer has no signature: not passed on as the user's data.
        assert status == 503 and "forged" not in str(body), (status, body)

        # Another worker's lookup is accepted with the cluster's signature only.
        path = "/api/users/ghost?full=1"
        routed = {"X-Mailstream-Routed": "1"}
        status, _, _ = await ask_directly(a.url + path, routed)
        assert status == 401
        outsider = ClusterKey("a-member-without-the-cluster-secret-0123")
        nonce = secrets.token_urlsafe(18)
        forged = {**routed, **outsider.request_headers("GET", path, time.time(), nonce)}
        status, _, _ = await ask_directly(a.url + path, forged)
        assert status == 401

        nonce = secrets.token_urlsafe(18)
        good = {**routed, **signed.cluster.request_headers("GET", path, time.time(), nonce)}
        status, answer, answer_sig = await ask_directly(a.url + path, good)
        assert status == 404 and b"no user 'ghost'" in answer  # accepted: a's own answer
        assert signed.cluster.answer_ok(nonce, status, answer, answer_sig)
        status, _, _ = await ask_directly(a.url + path, good)  # the same request again
        assert status == 401
        for w in (a, b):
            assert w.alive()
