"""Faults of a three-node Apache Kafka cluster under steady load, and what must hold
through every one of them (tests/integration/test_cluster_faults.py).

Each fault test produces the same kind of traffic at a steady pace while the fault
happens: per user an identify, a cart (a journey that waits, then sends a marketing
reminder), an order (a transactional receipt) and page views, with some messages
repeated and a few malformed. Afterwards, read through the API, the metrics and the
ledger: every produced event is accounted for exactly once; each user's state equals a
plain replay; no marketing send reached the provider twice; no receipt is lost; every
wait fired exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient

from tests.fakes.http_providers import FakeProviders
from tests.integration.harness import Deployment, Worker, get_users, wait_for
from tests.integration.traffic import replay

WAIT = "3s"
WORKFLOWS = {
    "cart": {
        "trigger": {"event": "cart_updated"},
        "entry": "always",
        "steps": [{"wait": WAIT}, {"send": "cart_reminder", "category": "marketing"}],
    },
    "receipt": {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [{"send": "order_receipt", "category": "transactional"}],
    },
}
# what a replay of the events alone decides in a user's view
REPLAYED = ("traits", "consent", "events", "first_seen", "last_activity")


def _event(event_type: str, user: str, payload: dict[str, Any], ts: int) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "event_type": event_type,
        "user_id": user,
        "timestamp": ts,
        "payload": payload,
    }


@dataclass
class Load:
    """The messages of one test, produced in order at a steady pace by ``run``."""

    users: list[str]
    messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)  # in produce order
    malformed: int = 0
    produced: int = 0  # acknowledged so far
    going: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: paused
    # the last tenth waits for this, so the fault happens under load however long it takes
    fault_over: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def make(cls, seed: int, users: int = 200, page_views: int = 6) -> Load:
        rng = random.Random(seed)
        load = cls([f"u{seed}-{i}" for i in range(users)])
        ts = int(time.time() * 1000)
        first = [
            _event("identify", u, {"email": f"{u}@example.com", "consent": {"marketing": True}}, ts)
            for u in load.users
        ]
        rest: list[dict[str, Any]] = []
        for u in load.users:
            rest.append(_event("cart_updated", u, {"items": [{"name": "mug", "qty": 1}]}, ts))
            rest.append(_event("order_completed", u, {"order_id": f"o-{u}", "total": 12}, ts))
            rest.extend(_event("page_viewed", u, {"path": "/"}, ts) for _ in range(page_views))
        rng.shuffle(rest)  # a user's own events keep no order, but identify comes first
        events = first + rest
        repeated = set(rng.sample(range(users, len(events)), len(events) // 20))
        bad = set(rng.sample(range(users, len(events)), 15))
        for i, e in enumerate(events):
            load.add(e)
            if i in repeated:
                load.add(events[i - users // 2])  # an earlier event again
            if i in bad:
                load.messages.append((e["user_id"].encode(), b'{"event_id": '))
                load.malformed += 1
        return load

    def add(self, event: dict[str, Any]) -> None:
        self.messages.append((event["user_id"].encode(), orjson.dumps(event)))
        self.valid.append(event)

    async def run(self, deployment: Deployment, per_second: float) -> None:
        """Produce every message, ``per_second`` of them a second."""
        self.going.set()
        started = time.monotonic()
        async with deployment.producer() as producer:
            for i, (key, value) in enumerate(self.messages):
                delay = started + i / per_second - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if i == len(self.messages) * 9 // 10 and not self.fault_over.is_set():
                    paused = time.monotonic()
                    await self.fault_over.wait()
                    started += time.monotonic() - paused
                if not self.going.is_set():
                    paused = time.monotonic()
                    await self.going.wait()
                    started += time.monotonic() - paused
                await producer.send_raw(key, value, wait=True)
                self.produced = i + 1

    async def until_produced(self, fraction: float, timeout: float = 120.0) -> None:
        async def far_enough() -> bool:
            return self.produced >= fraction * len(self.messages)

        await wait_for(far_enough, timeout, f"{fraction:.0%} of the load produced", interval=0.1)


async def _partitions(deployment: Deployment, *names: str) -> list[dict[str, Any]]:
    """The partitions (as the admin client describes them) of the deployment's topics,
    or of those whose names contain one of ``names``."""
    admin = AIOKafkaAdminClient(**deployment.kafka.client_kwargs())
    await admin.start()
    try:
        topics = [
            t
            for t in await admin.list_topics()
            if t.startswith(deployment.app_id) and (not names or any(n in t for n in names))
        ]
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return [p for t in described for p in t["partitions"]]


async def leaders(deployment: Deployment, *names: str) -> Counter[int]:
    """How many partitions of the topics whose names contain one of ``names`` (and this
    deployment's app id) each node leads."""
    return Counter(p["leader"] for p in await _partitions(deployment, *names))


async def in_sync(deployment: Deployment) -> bool:
    """Whether every replica of every partition of the deployment's topics is in sync."""
    return all(len(p["isr"]) == len(p["replicas"]) for p in await _partitions(deployment))


SUBJECTS = {"receipt": "Your receipt for order", "cart": "You left something in your cart"}


def _is(record: Any, workflow: str) -> bool:
    return bool(record.subject.startswith(SUBJECTS[workflow]))


def _sent(fake: FakeProviders, load: Load) -> str:
    """What the provider received, for a failure's message."""
    parts = []
    for workflow in SUBJECTS:
        got = [r for r in fake.received if _is(r, workflow)]
        per_id = Counter(r.metadata["send_id"] for r in got)
        missing = sorted(set(load.users) - {r.metadata["user_id"] for r in got})
        twice = [i for i, n in per_id.items() if n > 1]
        parts.append(
            f"{workflow}: {len(got)} sends, {len(twice)} twice, {len(missing)} users without"
            f" one (e.g. {missing[:3]})"
        )
    return "; ".join(parts)


async def ledger_of(workers: list[Worker]) -> dict[str, int]:
    """The ledgers of ``workers`` added up (together they must own every partition once)."""
    total: Counter[str] = Counter()
    for w in workers:
        status, stats = await w.get("/api/local/stats")
        assert status == 200, stats
        total.update(stats["ledger"])
    return dict(total)


async def settle(
    deployment: Deployment, workers: list[Worker], fake: FakeProviders, load: Load, timeout: float
) -> dict[str, int]:
    """Until the ledgers of ``workers`` count every message, every user's receipt went and
    every user's reminder went or was decided; returns the ledger."""
    users = len(load.users)
    ledger: dict[str, int] = {}
    health: list[Any] = []

    async def done() -> bool:
        nonlocal ledger, health
        health = [await w.health() for w in workers]
        if not all(h and h["ready"] for h in health):
            return False
        owned = sorted(p for h in health for p in h["partitions"])
        if owned != list(range(deployment.partitions)):
            return False
        ledger = await ledger_of(workers)
        receipts = {r.metadata["user_id"] for r in fake.received if _is(r, "receipt")}
        if ledger.get("events", 0) < len(load.messages) or len(receipts) < users:
            return False
        # A user without a reminder at the provider must have had it decided (its send
        # `unknown` after a crash, or still queued). Asked of the users themselves: a
        # count of `unknown` sends also counts reminders that reached the provider
        # before their worker died, and would settle before a late wait had fired.
        reminded = {r.metadata["user_id"] for r in fake.received if _is(r, "cart")}
        lacking = [("default", u) for u in sorted(set(load.users) - reminded)]
        views = await get_users(workers[0], lacking) if lacking else {}
        return all(
            status == 200 and any(d.get("workflow") == "cart" for d in view["send_decisions"])
            for status, view in views.values()
        )

    try:
        await wait_for(done, timeout, "every event, receipt and reminder", interval=1.0)
    except AssertionError:
        cart = {r.metadata["user_id"] for r in fake.received if _is(r, "cart")}
        missing = sorted(set(load.users) - cart)[:2]
        stopped = [w for w in workers if not w.alive()]
        shown: Any = "(no worker to ask)"
        if workers[0].alive():
            views = await get_users(workers[0], [("default", u) for u in missing])
            shown = {
                u: {k: v[k] for k in ("enrollments", "send_decisions", "deliveries") if k in v}
                for (_, u), (_, v) in views.items()
            }
        raise AssertionError(
            f"users without a reminder: {shown};\n"
            f"not settled: ledger {ledger}, of {len(load.messages)} messages;"
            f" {_sent(fake, load)}; health {health}"
            + "".join(f"\n{w.name} stopped; its log ends:\n{w.log_tail(15)}" for w in stopped)
        ) from None
    return ledger


async def check_outcome(
    deployment: Deployment,
    workers: list[Worker],
    fake: FakeProviders,
    load: Load,
    timeout: float = 120.0,
) -> None:
    """What must hold after any fault, once the load is produced."""
    assert load.produced == len(load.messages)
    assert load.fault_over.is_set(), "the test must say when its fault is over"
    ledger = await settle(deployment, workers, fake, load, timeout)
    # every produced event exactly once, whatever was replayed
    assert ledger.get("partitions") == deployment.partitions, ledger
    assert ledger["events"] == len(load.messages), ledger
    assert ledger.get("dead_lettered", 0) == load.malformed, ledger
    assert ledger.get("processed", 0) + ledger.get("deduplicated", 0) == len(load.valid), ledger

    per_id = Counter(r.metadata["send_id"] for r in fake.received)
    reminders = [r for r in fake.received if _is(r, "cart")]
    twice = sorted({r.metadata["send_id"] for r in reminders if per_id[r.metadata["send_id"]] > 1})
    assert twice == [], f"{len(twice)} marketing sends delivered twice, e.g. {twice[:3]}"
    receipts = {r.metadata["user_id"] for r in fake.received if _is(r, "receipt")}
    assert receipts == set(load.users), f"{len(set(load.users) - receipts)} receipts lost"

    expected = replay(load.valid)
    views = await get_users(workers[0], sorted(expected))
    wrong: list[str] = []
    waits: Counter[str] = Counter()
    for key, want in expected.items():
        status, view = views[key]
        if status != 200:
            wrong.append(f"{key}: HTTP {status} {view}")
            continue
        got = {k: view[k] for k in REPLAYED}
        if got != {k: want[k] for k in REPLAYED}:
            wrong.append(f"{key}: {got} != { ({k: want[k] for k in REPLAYED}) }")
        for decision in view["send_decisions"]:
            if decision.get("workflow") == "cart":
                waits[key[1]] += 1
    assert wrong == [], f"{len(wrong)} users differ from a replay, e.g. {wrong[:3]}"
    # every user's wait fired once: one reminder decided, whatever became of it
    assert sorted(waits.values()) == [1] * len(load.users), Counter(waits.values())
