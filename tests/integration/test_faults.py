"""Faults under load: a worker of two SIGKILLed while it works, and the broker going away.

Every consumed event must be accounted for exactly once in the durable ledger, no
marketing send may reach the provider twice, no receipt may be lost, and waits must
still fire on the worker that took over.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest

from mailstream.config.sections import IngestConfig
from mailstream.kafka.embedded_broker import EmbeddedBroker, free_port
from tests.fakes.http_providers import FakeProviders
from tests.integration.harness import Deployment, Worker, metric_sum, wait_for
from tests.integration.test_delivery import start, use_fake

CART = [{"name": "mug", "qty": 2}]
USERS = 240
BATCH_SIZE = IngestConfig.model_fields["batch_size"].default  # events a replay may repeat


def _event(event_type: str, user: str, payload: dict[str, Any]) -> tuple[bytes, bytes]:
    doc = {
        "event_id": uuid.uuid4().hex,
        "event_type": event_type,
        "user_id": user,
        "timestamp": int(time.time() * 1000),
        "payload": payload,
    }
    return user.encode(), orjson.dumps(doc)


def traffic(rng: random.Random) -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    """Each user: identify, cart, order, and page views; some messages twice, a few
    malformed. Returns the messages in send order and how many of each kind."""
    users = [f"f-{i}" for i in range(USERS)]
    first = [
        _event("identify", u, {"email": f"{u}@example.com", "consent": {"marketing": True}})
        for u in users
    ]
    rest: list[tuple[bytes, bytes]] = []
    for u in users:
        rest.append(_event("cart_updated", u, {"items": CART}))
        rest.append(_event("order_completed", u, {"order_id": f"o-{u}", "total": 12}))
        rest.extend(_event("page_viewed", u, {"path": "/"}) for _ in range(12))
    rng.shuffle(rest)  # a user's own events keep no order but identify comes first
    duplicates = rng.sample(rest, 150)
    malformed = [(b"f-bad", b"{not json")] * 20
    messages = first + rest + duplicates + malformed
    return messages, {"duplicates": len(duplicates), "malformed": len(malformed)}


@pytest.mark.only_on(
    "embedded",
    reason="on Apache Kafka, tests/integration/test_cluster_faults.py kills a worker under"
    " load and checks the same and more",
)
async def test_one_of_two_workers_killed_under_load_the_other_takes_over(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = {
        "cart": {
            "trigger": {"event": "cart_updated"},
            "entry": "always",
            "steps": [{"wait": "5s"}, {"send": "cart_reminder", "category": "marketing"}],
        },
        "receipt": {
            "trigger": {"event": "order_completed"},
            "entry": "always",
            "steps": [{"send": "order_receipt", "category": "transactional"}],
        },
    }
    async with FakeProviders() as fake:
        use_fake(deployment, fake, rate_limit=2000, concurrency=32)
        a = start(deployment, fake, "a")
        b = start(deployment, fake, "b")
        await deployment.wait_ready([a, b])
        messages, kinds = traffic(random.Random(7))
        async with deployment.producer() as p:
            for key, value in messages:
                await p.send_raw(key, value)
            await p.flush()

        async def b_busy() -> bool:
            consumed = metric_sum(await b.metrics(), "mailstream_events_consumed_total")
            return consumed >= 300

        await wait_for(b_busy, 60, "worker b to be busy", interval=0.05)
        b.kill(signal.SIGKILL)
        await deployment.wait_ready([a])  # a owns every partition now

        async def accounted() -> dict[str, Any] | None:
            status, stats = await a.get("/api/local/stats")
            assert status == 200
            ledger = stats["ledger"]
            receipts = {r.metadata["send_id"] for r in fake.received if _is(r, "receipt")}
            reminders = {r.metadata["send_id"] for r in fake.received if _is(r, "cart")}
            m = await a.metrics()
            unknown = metric_sum(m, "mailstream_deliveries_total", result="unknown")
            done = (
                ledger["events"] >= len(messages)
                and len(receipts) >= USERS
                and len(reminders) + unknown >= USERS
            )
            return ledger if done else None

        try:
            ledger = await wait_for(accounted, 120, "every event, receipt and reminder")
        except AssertionError:
            await _explain(a, fake, len(messages))
            raise

        # The ledger counts every message produced exactly once, whatever was replayed.
        assert ledger["partitions"] == 4
        assert ledger["events"] == len(messages), ledger
        assert ledger["dead_lettered"] == kinds["malformed"], ledger
        valid = len(messages) - kinds["malformed"]
        assert ledger["processed"] + ledger["deduplicated"] == valid, ledger
        # Events of b's last batch whose user records were durable before its progress
        # record are deduplicated on replay (their effects are already made): at most
        # one batch per partition b owned.
        extra = ledger["deduplicated"] - kinds["duplicates"]
        assert 0 <= extra <= 2 * BATCH_SIZE, ledger

        per_id = Counter(r.metadata["send_id"] for r in fake.received)
        reminders = [r for r in fake.received if _is(r, "cart")]
        twice = [r.metadata["send_id"] for r in reminders if per_id[r.metadata["send_id"]] > 1]
        assert twice == [], f"marketing delivered twice: {twice[:5]}"
        receipts = {r.metadata["user_id"] for r in fake.received if _is(r, "receipt")}
        assert receipts == {f"f-{i}" for i in range(USERS)}, "no receipt is lost"
        # Every user's 5 s wait fired once, on whichever worker held it at the time.
        m = await a.metrics()
        unknown = int(metric_sum(m, "mailstream_deliveries_total", result="unknown"))
        assert len({r.metadata["user_id"] for r in reminders}) + unknown == USERS


SUBJECTS = {"receipt": "Your receipt for order", "cart": "You left something in your cart"}


def _is(received: Any, workflow: str) -> bool:
    return bool(received.subject.startswith(SUBJECTS[workflow]))


async def _explain(a: Worker, fake: FakeProviders, produced: int) -> None:
    status, stats = await a.get("/api/local/stats")
    m = await a.metrics()
    print(
        f"produced {produced}; ledger {stats.get('ledger') if status == 200 else status};"
        f" received {Counter(r.subject[:20] for r in fake.received)};"
        f" unknown {metric_sum(m, 'mailstream_deliveries_total', result='unknown')};"
        f" fired {metric_sum(m, 'mailstream_timers_fired_total')}"
    )


async def test_a_broker_outage_stops_the_worker_loudly_and_a_restart_resumes(
    tmp_path: Any,
) -> None:
    """The embedded broker keeps topics in memory: when it goes away, a worker must not
    sit on as if all were well (embedded only: it stops the test's own broker, which loses
    everything; a Kafka broker's failover is the cluster fault tests' matter). It exits
    non-zero, saying so; started again against the restarted broker, a worker processes
    new events."""
    broker = EmbeddedBroker("127.0.0.1", free_port(), log_path=tmp_path / "own-broker.log")
    broker.start()
    d = Deployment(broker, tmp_path)
    d.overrides["broker"] = {"lost_after": "10s"}
    try:
        await d.setup()
        a = d.worker("a").start()
        await d.wait_ready([a])
        await _emit_and_wait(d, a, "before", 100)

        broker.stop()
        deadline = time.monotonic() + 60
        while a.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not a.alive(), "the worker went on as if the broker were there"
        assert a.process is not None and a.process.returncode not in (0, None)
        assert "has not answered for" in a.log_path.read_text(errors="replace")

        broker.start()
        await d.setup()  # memory storage: the restarted broker has no topics
        again = d.worker("again").start()
        await d.wait_ready([again])
        await _emit_and_wait(d, again, "after", 100)
    finally:
        d.stop_all()
        broker.stop()


async def _emit_and_wait(d: Deployment, worker: Worker, prefix: str, n: int) -> None:
    async with d.producer() as p:
        for i in range(n):
            await p.emit("page_viewed", f"{prefix}-{i}")
        await p.flush()

    async def processed() -> bool:
        m = await worker.metrics()
        return metric_sum(m, "mailstream_events_total", outcome="processed") >= n

    await wait_for(processed, 60, f"{n} events processed")
