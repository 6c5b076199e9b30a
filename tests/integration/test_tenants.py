"""Tenants on a real worker: the same user id in two tenants stays two users (state,
sends, the API's view), and one tenant's flood does not hold up another's receipt."""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.http_providers import FakeProviders
from tests.integration.harness import Deployment, metric_sum, wait_for
from tests.integration.test_delivery import command, produce, start, use_fake

RATE = 20.0  # sends per second: one token each 50 ms
FLOOD = 10_000  # acme's marketing sends
RECEIPT = {
    "order_receipt": {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [{"send": "order_receipt", "category": "transactional"}],
    }
}


async def test_two_tenants_stay_apart_and_a_flood_does_not_delay_the_other(
    deployment: Deployment,
) -> None:
    async with FakeProviders() as fake:
        use_fake(deployment, fake, rate_limit=RATE, burst=RATE, from_address="Shop <s@shop.test>")
        deployment.overrides["workflows"] = RECEIPT
        deployment.overrides["tenants"] = {
            "acme": {
                "delivery": {"from_address": "Acme <hi@acme.test>"},
                # a workflow of acme's alone (its event is never sent here)
                "workflows": {
                    "acme_receipt": {**RECEIPT["order_receipt"], "trigger": {"event": "ping"}}
                },
            },
            "globex": {"quota": {"events_per_second": 1000}},
        }
        worker = start(deployment, fake, "a")
        await deployment.wait_ready([worker])

        # The same user id in two tenants (and an unconfigured one, refused).
        async with deployment.producer() as producer:
            for tenant in ("acme", "globex", "initech"):
                email = {"email": f"{tenant}@example.com"}
                await producer.identify("u1", email, tenant_id=tenant)
                await producer.emit(
                    "order_completed", "u1", {"order_id": "A-1", "total": 5}, tenant_id=tenant
                )
        got = await fake.wait_for(2, timeout=30)
        assert sorted((r.to, r.from_address) for r in got) == [
            ("acme@example.com", "Acme <hi@acme.test>"),
            ("globex@example.com", "Shop <s@shop.test>"),
        ]
        assert sorted(r.metadata["tenant_id"] for r in got) == ["acme", "globex"]
        views: dict[str, Any] = {}

        async def both_sent() -> bool:
            for tenant in ("acme", "globex"):
                status, views[tenant] = await worker.get("/api/users/u1", tenant=tenant, full="1")
                # A send command is made durable before the user record that caused it
                # (mailstream.state.staged_flush), so a send can arrive before its user is
                # readable: on three Kafka replicas that takes a round trip more.
                if status == 404:
                    return False
                assert status == 200, views[tenant]
                if [d["state"] for d in views[tenant]["deliveries"]] != ["sent"]:
                    return False
            return True

        await wait_for(both_sent, timeout=10, what="both receipts recorded as sent")
        for tenant, view in views.items():
            assert view["tenant_id"] == tenant
            assert view["traits"]["email"] == f"{tenant}@example.com"
            assert view["events"] == {"order_completed": 1}
        acme_send = views["acme"]["deliveries"][0]["send_id"]
        assert acme_send != views["globex"]["deliveries"][0]["send_id"]
        status, _ = await worker.get("/api/users/u1", tenant="initech")
        assert status == 404
        m = await worker.metrics()
        assert metric_sum(m, "mailstream_dead_letters_total", reason="unknown_tenant") == 2
        for tenant in ("acme", "globex"):
            assert metric_sum(m, "mailstream_events_total", outcome="processed", tenant=tenant) == 2
            sent = metric_sum(m, "mailstream_sends_total", result="sent", tenant=tenant)
            assert sent == 1
        status, health = await worker.get("/api/workflows/health")
        assert status == 200
        assert {"order_receipt", "acme_receipt"} <= set(health["workflows"])  # acme's own too
        status, board = await worker.get("/api/dashboard")
        assert status == 200
        assert board["tenants"]["acme"]["processed"] == 2
        assert board["tenants"]["globex"]["sent"] == 1

        # acme floods the queue with marketing and transactional sends. (Taking in 10,000
        # commands costs two changelog records each at one record per batch on the
        # embedded broker: FLOOD keeps the test well under a minute on a shared machine.)
        flood = [
            command(f"m{i}", f"user{i % 500}", "marketing", tenant_id="acme") for i in range(FLOOD)
        ] + [command(f"t{i}", f"user{i % 500}", tenant_id="acme") for i in range(300)]
        await produce(deployment, flood)

        async def queued() -> bool:
            m = await worker.metrics()
            return (
                metric_sum(m, "mailstream_deliveries_total", result="queued", tenant="acme")
                >= FLOOD + 301
            )

        await wait_for(queued, timeout=45, what="acme's flood queued")
        before = len(fake.messages())
        ready = time.time()
        await produce(deployment, [command("receipt", "u1", tenant_id="globex")])
        [receipt] = await fake.wait_for(1, to="u1@example.com", timeout=10)
        waited = receipt.wall - ready
        # Behind acme's 300 transactional sends it would wait 300 / RATE (15 s). Not behind
        # them: one token interval, and the hops to take the command in (on three Kafka
        # replicas sharing two cores with the worker, a produce alone can take 0.2 s).
        assert waited <= 1 / RATE + 2.0, f"globex's receipt waited {waited:.3f} s"
        sent_acme = len(fake.messages()) - 1
        assert sent_acme - before < 300, "acme's transactional flood is still queued"
        assert all(
            r.metadata["tenant_id"] == "acme"
            for r in fake.messages()
            if r is not receipt and r.to != "globex@example.com"
        )
