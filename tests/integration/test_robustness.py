"""Robustness on real workers: a send whose provider answer breaks the dispatcher is
dead-lettered while every other send goes on; finished records are deleted once their
retention is over, and the user's page still answers."""

from __future__ import annotations

import orjson

from tests.fakes.http_providers import FakeProviders
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.harness import Deployment, metric_sum, wait_for
from tests.integration.test_delivery import command, produce, start, use_fake


async def test_a_send_that_breaks_the_dispatcher_is_dead_lettered_and_the_others_go_on(
    deployment: Deployment,
) -> None:
    async with FakeProviders() as fake:
        use_fake(deployment, fake, retry={"base": "200ms", "max_attempts": 3})
        # A Retry-After of 10^20 seconds parses, but no queue key can hold a retry time
        # that far out: recording this outcome raises in the dispatcher, every time.
        fake.script("poison@example.com", [("429", {"Retry-After": "100000000000000000000"})])
        worker = start(deployment, fake, "a")
        await deployment.wait_ready([worker])
        first = [command("s-poison", "poison", "marketing")]
        first += [command(f"s{i}", f"user{i}") for i in range(5)]
        await produce(deployment, first)

        letters = await deployment.read_topic(deployment.topics["dlq"], 1, timeout=30)
        assert len(letters) == 1
        headers = dict(letters[0].headers)
        assert headers["mailstream.reason_code"] == b"dispatcher_error"
        reason = headers["mailstream.reason"].decode()
        assert "the delivery dispatcher failed 3 times on it" in reason
        assert "the provider had answered http_429" in reason
        assert orjson.loads(letters[0].value)["send_id"] == "s-poison"

        # The dispatcher is still running: sends made after the poison go out too.
        await produce(deployment, [command(f"t{i}", f"later{i}") for i in range(5)])
        got = await fake.wait_for(10, timeout=30)
        assert sorted(r.metadata["send_id"] for r in got) == sorted(
            [f"s{i}" for i in range(5)] + [f"t{i}" for i in range(5)]
        )
        # Marketing is never sent twice: the poison was tried once, and given up.
        assert [a.status for a in fake.attempts if a.to == "poison@example.com"] == [429]
        m = await worker.metrics()
        assert metric_sum(m, "mailstream_dispatcher_errors_total", dispatcher="delivery") == 3
        assert metric_sum(m, "mailstream_dead_letters_total", reason="dispatcher_error") == 1
        assert metric_sum(m, "mailstream_deliveries_total", result="dead_lettered") == 1
        assert worker.alive()


SECRET = "crm-secret-0123456789"
FLOWS = {
    "order_receipt": {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [
            {"webhook": {"endpoint": "crm", "body": {"order": "{{ event.order_id }}"}}},
            {"send": "order_receipt", "category": "transactional"},
        ],
    }
}


async def test_finished_records_are_deleted_after_their_retention(deployment: Deployment) -> None:
    async with FakeProviders() as fake, WebhookReceiver({"crm": SECRET}) as hooks:
        use_fake(deployment, fake)
        deployment.overrides["webhooks_out"] = {
            "crm": {"url": hooks.url("crm"), "secret_env": "CRM_WEBHOOK_SECRET"}
        }
        deployment.overrides["workflows"] = FLOWS
        # A retention of seconds is refused unless the dedup window is shorter still.
        deployment.overrides["ingest"] = {"dedup_window": "1s"}
        deployment.overrides["retention"] = {
            "deliveries": "2s",
            "webhook_calls": "2s",
            "sweep_every": "1s",
        }
        worker = deployment.worker("a")
        worker.env.update(fake.env(), CRM_WEBHOOK_SECRET=SECRET)
        worker.start()
        await deployment.wait_ready([worker])
        async with deployment.producer() as producer:
            for user in ("ada", "bob"):
                await producer.identify(user, {"email": f"{user}@example.com"})
                await producer.emit("order_completed", user, {"order_id": f"A-{user}", "total": 5})
        await fake.wait_for(2, timeout=30)

        async def states(user: str) -> list[str] | None:
            status, view = await worker.get(f"/api/users/{user}")
            if status == 404:
                # a send is durable before the user record that caused it, so it can
                # reach the provider before the user is readable: not yet
                return None
            assert status == 200, view
            assert len(view["send_decisions"]) == 1  # the decision stays
            return [d["state"] for d in view["deliveries"]]

        async def sent() -> bool:
            return await states("ada") == ["sent"]

        async def pruned() -> bool:
            return await states("ada") == [] and await states("bob") == []

        await wait_for(sent, timeout=10, what="ada's receipt recorded as sent")
        await wait_for(pruned, timeout=15, what="the delivery records to be deleted")
        status, page = await worker.get("/users/ada")
        assert status == 200 and "ada" in page

        async def counted() -> bool:
            m = await worker.metrics()
            final = metric_sum(m, "mailstream_records_pruned_total", table="deliveries")
            calls = metric_sum(m, "mailstream_records_pruned_total", table="webhook_calls")
            return final == 2 and calls == 2

        await wait_for(counted, timeout=15, what="2 deliveries and 2 webhook calls pruned")
        assert len(hooks.to("crm")) == 2
