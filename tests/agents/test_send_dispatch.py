"""The email dispatcher, in-process: queued sends taken, paced, attempted, and recorded
as sent, retried, failed, given up or suppressed; orphaned attempts after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from mailstream.core.tenants import Quota, Tenancy
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery import state_machine as states
from mailstream.delivery.dispatch_shell import QueueTables
from mailstream.delivery.retention import sent_key
from mailstream.delivery.round_guard import ErrorPolicy, ErrorTracker
from mailstream.delivery.send_dispatcher import SendDispatcher
from mailstream.delivery.state_machine import Delivery, QueueKey, accept, delivery_key
from mailstream.providers.base import SendFailure
from mailstream.suppression.entries import Suppression
from tests.agents.memory_tables import (
    AddressList,
    FakeClock,
    MemoryFlush,
    MemoryTable,
    Runtime,
    runtime,
)

TENANT = "acme"


class Deliveries:
    """A send dispatcher on memory tables, a fake clock and no jitter."""

    def __init__(self, rt: Runtime | None = None, tenancy: Tenancy | None = None) -> None:
        self.clock = FakeClock()
        self.records = MemoryTable("deliveries")
        self.queue = MemoryTable("delivery_queue")
        self.users = MemoryTable("users")
        self.flush = MemoryFlush()
        self.rt = rt or runtime()
        self.tenancy = tenancy or Tenancy(TENANT)
        self.listed = AddressList()
        self.dispatcher = self.start_worker()

    def start_worker(self) -> SendDispatcher:
        """A dispatcher as a (re)started worker has it: nothing in flight."""
        self.dispatcher = SendDispatcher(
            tables=QueueTables(self.records, self.queue, "dlq", "delivery"),
            users=self.users,
            runtime=self.rt,
            tenancy=self.tenancy,
            suppression_list=self.listed,
            workflows=lambda tenant: set(),
            partitions=2,
            flush=self.flush,
            ready=lambda: True,
            clock=lambda: self.clock.wall,
            monotonic=lambda: self.clock.mono,
            jitter=lambda: 0.0,
        )
        self.dispatcher.errors = ErrorTracker(ErrorPolicy(backoff_base_s=0.0, backoff_max_s=0.0))
        return self.dispatcher

    def command(self, send_id: str, category: str, to: str) -> dict[str, Any]:
        return {
            "send_id": send_id,
            "tenant_id": TENANT,
            "user_id": f"user-{send_id}",
            "to": to,
            "category": category,
            "subject": "Hello",
            "text": "Hi",
            "html": "<p>Hi</p>",
        }

    def queue_send(
        self, send_id: str, category: str = "transactional", to: str = "ada@example.com"
    ) -> dict[str, Any]:
        """Queued as the intake queues it (mailstream.delivery.send_intake)."""
        command = self.command(send_id, category, to)
        record = accept(None, command, self.clock.ms, self.tenancy.lane(TENANT))
        assert record is not None and record.queue_key is not None
        self.queue.put(0, record.queue_key, orjson.dumps(command))
        self.records.put(0, delivery_key(TENANT, send_id), record.encode())
        return command

    async def round(self) -> None:
        """One round, and the calls it started run to their end."""
        await self.dispatcher.run_round()
        await asyncio.gather(*list(self.dispatcher.tasks))

    def record(self, send_id: str) -> Delivery:
        raw = self.records.get(0, delivery_key(TENANT, send_id))
        assert raw is not None
        return Delivery.decode(raw)

    def queued(self) -> list[str]:
        return [QueueKey.decode(k).send_id for _, k in self.queue.keys()]

    def dead_letters(self) -> list[tuple[bytes, dict[str, bytes]]]:
        return [(value, headers) for _, value, headers in self.flush.on("dlq")]

    def sent_today(self) -> int:
        raw = self.records.get(0, sent_key("2026-03-01"))
        return int(raw) if raw is not None else 0


async def test_a_queued_send_is_attempted_then_recorded_as_sent() -> None:
    d = Deliveries()
    d.queue_send("s1")
    await d.dispatcher.run_round()
    assert d.record("s1").state == states.ATTEMPTING, "recorded before the provider is called"
    assert d.record("s1").attempts == 1
    await asyncio.gather(*list(d.dispatcher.tasks))
    assert [m.send_id for m in d.rt.provider.sent] == ["s1"]
    await d.round()
    record = d.record("s1")
    assert (record.state, record.provider_id, record.queue_key) == (states.SENT, "id-1", None)
    assert d.queued() == []
    assert d.sent_today() == 1
    await d.round()
    assert len(d.rt.provider.sent) == 1, "sent once"


async def test_sends_wait_for_the_pacer_and_transactional_goes_first() -> None:
    d = Deliveries(runtime(rate=1.0, burst=1.0))
    d.queue_send("news", "marketing", "bob@example.com")
    d.queue_send("receipt")
    await d.round()
    assert [m.send_id for m in d.rt.provider.sent] == ["receipt"]
    await d.round()
    assert d.record("news").state == states.QUEUED, "one send a second"
    d.clock.advance(1.0)
    await d.round()
    assert [m.send_id for m in d.rt.provider.sent] == ["receipt", "news"]
    assert "List-Unsubscribe" in d.rt.provider.sent[1].headers


async def test_a_retryable_failure_is_tried_again_after_its_backoff() -> None:
    d = Deliveries()
    d.queue_send("s1")
    d.rt.provider.script["ada@example.com"] = [SendFailure("http_503", "busy", retryable=True)]
    await d.round()
    await d.round()
    record = d.record("s1")
    assert (record.state, record.history[-1][1:]) == (states.QUEUED, ["http_503", "busy"])
    assert record.queue_key is not None
    # backoff: half of the base 2 s with no jitter
    assert QueueKey.decode(record.queue_key).ready == d.clock.ms + 1000
    await d.round()
    assert len(d.rt.provider.sent) == 1, "not before its time"
    d.clock.advance(1.0)
    await d.round()
    await d.round()
    assert (d.record("s1").state, d.record("s1").attempts) == (states.SENT, 2)
    assert d.queued() == []


async def test_retries_used_up_are_given_up_and_listed() -> None:
    d = Deliveries()
    d.queue_send("s1")
    busy = [SendFailure("http_503", "busy", retryable=True) for _ in range(3)]
    d.rt.provider.script["ada@example.com"] = busy
    for _ in range(3):
        await d.round()
        await d.round()
        d.clock.advance(600)
    assert (d.record("s1").state, d.record("s1").attempts) == (states.FAILED, 3)
    [(value, headers)] = d.dead_letters()
    assert headers["mailstream.reason_code"] == b"delivery_exhausted"
    assert headers["mailstream.reason"].startswith(b"gave up after 3 attempts")
    assert len(orjson.loads(headers["mailstream.attempts"])) == 3
    assert orjson.loads(value)["send_id"] == "s1"
    assert d.queued() == []


async def test_a_hard_bounce_fails_the_send_and_suppresses_its_user() -> None:
    d = Deliveries()
    command = d.queue_send("s1", to="gone@example.com")
    key = user_key(TENANT, command["user_id"])
    d.users.put(0, key, UserState(TENANT, command["user_id"]).encode())
    d.rt.provider.script["gone@example.com"] = [
        SendFailure("smtp_550", "no such user", retryable=False, invalid_recipient=True)
    ]
    await d.round()
    await d.round()
    assert d.record("s1").state == states.FAILED
    [(_, headers)] = d.dead_letters()
    assert headers["mailstream.reason_code"] == b"delivery_failed"
    stored = d.users.get(0, key)
    assert stored is not None
    bounce = UserState.decode(stored).suppressions["hard_bounce"]
    assert (bounce.source, bounce.at) == ("delivery:scripted:smtp_550", d.clock.ms)


async def test_a_send_whose_user_or_address_was_suppressed_since_is_not_sent() -> None:
    d = Deliveries()
    own = d.queue_send("mine", "marketing")
    d.queue_send("listed", "marketing", "spam-trap@example.com")
    user = UserState(TENANT, own["user_id"])
    user.suppressions["unsubscribe"] = Suppression("unsubscribe", "link", d.clock.ms)
    d.users.put(0, user_key(TENANT, own["user_id"]), user.encode())
    d.listed.entries["spam-trap@example.com"] = Suppression("complaint", "esp", d.clock.ms)
    await d.round()
    assert d.rt.provider.sent == []
    assert (d.record("mine").state, d.record("listed").state) == (states.DROPPED, states.DROPPED)
    assert "the user is suppressed" in d.record("mine").history[-1][2]
    assert "global suppression list" in d.record("listed").history[-1][2]
    assert d.queued() == []


async def test_marketing_over_its_tenants_sends_per_day_waits_for_tomorrow() -> None:
    d = Deliveries(tenancy=Tenancy(TENANT, {TENANT: Quota(sends_per_day=1)}))
    d.queue_send("first", "marketing", "a@example.com")
    d.queue_send("second", "marketing", "b@example.com")
    await d.round()
    await d.round()
    assert [m.send_id for m in d.rt.provider.sent] == ["first"]
    held = d.record("second")
    assert (held.state, held.history[-1][1]) == (states.QUEUED, "quota_deferred")
    assert held.queue_key is not None
    assert QueueKey.decode(held.queue_key).ready == 1_772_409_600_000  # 2026-03-02T00:00Z


async def test_an_orphaned_receipt_is_sent_again_and_orphaned_marketing_is_listed() -> None:
    d = Deliveries()
    d.queue_send("receipt")
    d.queue_send("news", "marketing", "bob@example.com")
    await d.dispatcher.run_round()  # both `attempting`; the worker dies before the calls
    for task in list(d.dispatcher.tasks):
        task.cancel()
    assert d.record("news").state == states.ATTEMPTING
    d.rt.provider.sent.clear()
    d.start_worker()
    await d.round()  # the orphans are resolved
    assert d.record("receipt").state == states.QUEUED
    assert d.record("news").state == states.UNKNOWN, "marketing is never sent twice"
    [(value, headers)] = d.dead_letters()
    assert headers["mailstream.reason_code"] == b"unknown_outcome"
    assert orjson.loads(value)["send_id"] == "news", "the command, for an operator to check"
    await d.round()
    await d.round()
    assert [m.send_id for m in d.rt.provider.sent] == ["receipt"]
    assert d.record("receipt").state == states.SENT


async def test_a_send_the_dispatcher_keeps_failing_on_is_dead_lettered_and_the_rest_go() -> None:
    d = Deliveries()
    d.queue_send("s1")
    poison = d.queue_send("poison", to="poison@example.com")
    # a queued command that cannot be read back: every round raises on it
    record = Delivery.decode(d.records.get(0, delivery_key(TENANT, "poison")) or b"")
    assert record.queue_key is not None
    d.queue.put(0, record.queue_key, b"{not json")
    for _ in range(3):
        try:
            await d.round()
        except Exception as exc:
            await d.dispatcher.after_error(exc)
    assert d.record("poison").state == states.DEAD_LETTERED
    letters = [h for _, h in d.dead_letters()]
    assert [h["mailstream.reason_code"] for h in letters] == [b"dispatcher_error"]
    assert b"failed 3 times on it" in letters[0]["mailstream.reason"]
    await d.round()
    await d.round()
    assert d.record("s1").state == states.SENT
    assert poison["send_id"] not in d.queued() and d.queued() == []


async def test_a_round_whose_flush_fails_loses_no_outcome() -> None:
    d = Deliveries()
    d.queue_send("s1")
    await d.round()
    d.flush.fail = 1
    try:
        await d.round()
    except ConnectionError:
        pass
    assert d.record("s1").state == states.ATTEMPTING
    await d.round()
    assert d.record("s1").state == states.SENT
    assert len(d.rt.provider.sent) == 1


async def test_a_call_that_ends_after_its_partition_moved_is_left_to_the_new_owner() -> None:
    d = Deliveries()
    d.queue_send("s1")
    await d.dispatcher.run_round()  # the call starts
    d.queue.assign([1])  # and partition 0 moves to another worker meanwhile
    await asyncio.gather(*list(d.dispatcher.tasks))
    await d.round()
    # no write to a partition this worker lost: its new owner finds the send
    # `attempting` and applies the category's policy
    assert d.record("s1").state == states.ATTEMPTING
    assert d.dispatcher.settling == [] and d.dispatcher.inflight == set()
    assert len(d.rt.provider.sent) == 1
