"""The webhook step on a real worker against a local receiver: a flaky endpoint gets each
call exactly once successfully, signed; a dead one trips its breaker, which then holds
calls back; a malformed command is dead-lettered and the worker goes on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration import signed
from tests.integration.harness import Deployment, metric_sum, read_json, wait_for

SECRETS = {"flaky": "flaky-secret-0123456789", "down": "down-secret-0123456789"}
COOL_DOWN = 2.0


def endpoints(hooks: WebhookReceiver) -> dict[str, Any]:
    fast = {"timeout": "2s", "backoff": {"base": "100ms", "max_delay": "300ms"}}
    return {
        "flaky": {
            "url": hooks.url("flaky"),
            "secret_env": "FLAKY_WEBHOOK_SECRET",
            "retries": 5,
            "breaker": {"failures": 5, "cool_down": "1s"},
            **fast,
        },
        "down": {
            "url": hooks.url("down"),
            "secret_env": "DOWN_WEBHOOK_SECRET",
            "retries": 50,
            "breaker": {"failures": 3, "cool_down": f"{COOL_DOWN}s"},
            **fast,
        },
    }


WORKFLOWS = {
    "crm_sync": {
        "trigger": {"event": "signup"},
        "steps": [
            {
                "webhook": {
                    "endpoint": "flaky",
                    "body": {
                        "email": "{{ user.email }}",
                        "name": "{{ user.first_name }}",
                        "plan": "{{ event.plan }}",
                        "seats": "{{ event.seats }}",
                    },
                    "store": {"from": "crm_id", "as": "crm_id"},
                }
            },
            {"wait": "1h"},  # keeps the enrollment, so its context can be read back
        ],
    },
    "order_hook": {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [{"webhook": {"endpoint": "down", "body": {"order": "{{ event.order_id }}"}}}],
    },
}
HOSTILE_NAME = '"},"admin":true,"x":{"{{ 7*7 }}'


async def produce_raw(deployment: Deployment, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=deployment.broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_exactly_one_success_signed_and_a_breaker_that_holds_calls_back(
    deployment: Deployment,
) -> None:
    async with WebhookReceiver(SECRETS) as hooks:
        hooks.script("flaky", [500, 502, 503])
        hooks.always("down", 503)
        deployment.overrides["webhooks_out"] = endpoints(hooks)
        deployment.overrides["workflows"] = WORKFLOWS
        worker = deployment.worker("a")
        worker.env.update(
            FLAKY_WEBHOOK_SECRET=SECRETS["flaky"], DOWN_WEBHOOK_SECRET=SECRETS["down"]
        )
        worker.start()
        await deployment.wait_ready([worker])
        topics = deployment.topics

        # A malformed command first: dead-lettered with its reason, and the worker goes on.
        malformed = signed.cluster.seal("webhook", b"u0", b'{"webhook_id": 1}')
        await produce_raw(deployment, topics["webhooks"], b"u0", malformed)
        async with deployment.producer() as p:
            await p.identify("u1", {"email": "ada@example.com", "first_name": HOSTILE_NAME})
            await p.emit("signup", "u1", {"plan": "pro", "seats": 3})
            for n in range(5):
                await p.emit("order_completed", f"d{n}", {"order_id": f"o{n}"})
            await p.flush()

        # -- the flaky endpoint: three 5xx, then exactly one success, every request signed
        async def delivered() -> bool:
            return sum(hooks.successes("flaky").values()) >= 1

        await wait_for(delivered, 30, "the flaky endpoint to take the webhook")
        tries = hooks.to("flaky")
        assert all(r.signature_ok for r in tries)
        assert [r.status for r in tries] == [500, 502, 503, 200]
        assert [r.attempt for r in tries] == [1, 2, 3, 4]
        assert len({r.webhook_id for r in tries}) == 1
        assert tries[-1].body == {
            "email": "ada@example.com",
            "name": HOSTILE_NAME,  # a value stays a string, never markup or a template
            "plan": "pro",
            "seats": 3,
        }
        [webhook_id] = hooks.successes("flaky")

        # the answer's crm_id lands in the enrollment's context
        async def stored() -> Any:
            status, user = await worker.get("/api/users/u1")
            ctx = user.get("enrollments", {}).get("crm_sync", {}).get("ctx", {})
            return ctx if status == 200 and "crm_id" in ctx else None

        ctx = await wait_for(stored, 15, "the stored crm_id")
        assert ctx == {"plan": "pro", "seats": 3, "crm_id": f"crm-{webhook_id[:8]}"}

        # the same command again (a replay): not called again
        commands = await read_json(deployment, topics["webhooks"], 7, timeout=10)
        [command] = [c for c in commands if c.get("endpoint") == "flaky"]
        assert command["webhook_id"] == webhook_id
        del command["mailstream_sig"]
        await produce_raw(deployment, topics["webhooks"], *signed.webhook_command(command))

        async def deduplicated() -> bool:
            m = await worker.metrics()
            return (
                metric_sum(
                    m, "mailstream_webhook_commands_total", endpoint="flaky", result="deduplicated"
                )
                >= 1
            )

        await wait_for(deduplicated, 15, "the replayed command to be skipped")
        assert hooks.successes("flaky") == {webhook_id: 1}

        # -- the dead endpoint: the breaker opens and holds calls back --------------------
        async def opened() -> dict[str, float] | None:
            m = await worker.metrics()
            state = metric_sum(m, "mailstream_webhook_breaker_state", endpoint="down")
            held = metric_sum(
                m, "mailstream_webhook_calls_total", endpoint="down", outcome="short_circuited"
            )
            return m if state == 2 and held > 0 else None

        await wait_for(opened, 20, "the breaker of the dead endpoint to open", interval=0.1)
        # Watch two and a half cool-downs; the receiver serves from this loop meanwhile.
        observe_until = time.monotonic() + 2.5 * COOL_DOWN
        while time.monotonic() < observe_until:
            assert worker.alive(), worker.log_tail()
            await asyncio.sleep(0.2)
        m = await worker.metrics()

    times = sorted(r.monotonic for r in hooks.to("down"))
    assert all(r.signature_ok and r.status == 503 for r in hooks.to("down"))
    # The first calls go out together; three failures open the breaker. Before it opens
    # it has seen at most two failures, so the burst is the five first attempts and at
    # most two retries (the commands can arrive in two batches, a retry 100 ms after the
    # first failures). After that, no request while it is open: one probe per
    # cool-down, each failing and reopening it.
    burst = [t for t in times if t - times[0] < 0.5]
    probes = times[len(burst) :]
    assert 3 <= len(burst) <= 5 + 2, times
    assert probes, "a probe after the cool-down"
    gaps = [b - a for a, b in zip([burst[-1], *probes], probes, strict=False)]
    assert all(gap >= COOL_DOWN * 0.9 for gap in gaps), gaps
    down = {"endpoint": "down"}
    assert metric_sum(m, "mailstream_webhook_breaker_transitions_total", state="open", **down) >= 2
    assert metric_sum(m, "mailstream_webhook_breaker_transitions_total", state="half_open", **down)
    held = metric_sum(m, "mailstream_webhook_calls_total", outcome="short_circuited", **down)
    assert held >= 2
    assert metric_sum(m, "mailstream_webhook_request_seconds_count", endpoint="flaky") == 4
    assert metric_sum(m, "mailstream_webhook_calls_total", outcome="retry", endpoint="flaky") == 3

    letters = await deployment.read_topic(deployment.topics["dlq"], 1, timeout=10)
    reasons = [dict(letter.headers)["mailstream.reason_code"] for letter in letters]
    assert reasons == [b"bad_webhook_command"]
    assert b"webhook_id" in dict(letters[0].headers)["mailstream.reason"]
