"""The webhook dispatcher, in-process: due calls made, retried, failed, held by an open
breaker, expired or dead-lettered; an orphaned attempt after a restart made again."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from mailstream.config.webhooks_out_settings import Endpoint
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery.dispatch_shell import QueueTables
from mailstream.delivery.round_guard import ErrorPolicy, ErrorTracker
from mailstream.delivery.state_machine import (
    ATTEMPTING,
    FAILED,
    QUEUED,
    SENT,
    Delivery,
    QueueKey,
    RetryPolicy,
)
from mailstream.providers.base import SendFailure
from mailstream.webhooks_out.call_dispatcher import CallDispatcher
from mailstream.webhooks_out.call_state import accept_call
from mailstream.webhooks_out.circuit_breaker import BreakerSettings
from mailstream.webhooks_out.poster import CallResult
from tests.agents.memory_tables import FakeClock, MemoryFlush, MemoryTable, ScriptedEndpoints

TENANT = "acme"
CRM = Endpoint(
    name="crm",
    url="http://127.0.0.1:9/hook",
    secret=b"k" * 32,
    timeout=5.0,
    retry=RetryPolicy(max_attempts=3, base_s=2.0, max_delay_s=60.0),
    breaker=BreakerSettings(failures=2, cool_down=30.0),
    give_up_after_ms=3_600_000,
)
DOWN = CallResult(SendFailure("http_503", "down", retryable=True), None, 503)


class Calls:
    """A webhook dispatcher on memory tables, a fake clock and no jitter."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.records = MemoryTable("webhook_calls")
        self.queue = MemoryTable("webhook_queue")
        self.users = MemoryTable("users")
        self.flush = MemoryFlush()
        self.endpoints = ScriptedEndpoints()
        self.dispatcher = self.start_worker()

    def start_worker(self) -> CallDispatcher:
        """A dispatcher as a (re)started worker has it: nothing in flight."""
        self.dispatcher = CallDispatcher(
            endpoints={"crm": CRM},
            tables=QueueTables(self.records, self.queue, "dlq", "webhooks"),
            users=self.users,
            flush=self.flush,
            ready=lambda: True,
            client=self.endpoints,
            clock=lambda: self.clock.wall,
            monotonic=lambda: self.clock.mono,
            jitter=lambda: 0.0,
        )
        self.dispatcher.errors = ErrorTracker(ErrorPolicy(backoff_base_s=0.0, backoff_max_s=0.0))
        return self.dispatcher

    def queue_call(
        self, webhook_id: str, endpoint: str = "crm", age_s: float = 0.0, **more: Any
    ) -> dict[str, Any]:
        """Queued as the webhook agent's intake queues it."""
        command = {
            "webhook_id": webhook_id,
            "tenant_id": TENANT,
            "user_id": "u1",
            "endpoint": endpoint,
            "workflow": "onboarding",
            "enrollment_id": "e1",
            "step": 2,
            "body": {"email": "ada@example.com"},
            "store": None,
            "created_at": self.clock.ms - int(age_s * 1000),
            **more,
        }
        record = accept_call(None, command, self.clock.ms)
        assert record is not None and record.queue_key is not None
        self.queue.put(0, record.queue_key, orjson.dumps(command))
        self.records.put(0, webhook_id.encode(), record.encode())
        return command

    async def round(self) -> None:
        """One round, and the calls it started run to their end."""
        await self.dispatcher.run_round()
        await asyncio.gather(*list(self.dispatcher.tasks))

    def record(self, webhook_id: str) -> Delivery:
        raw = self.records.get(0, webhook_id.encode())
        assert raw is not None
        return Delivery.decode(raw)

    def called(self) -> list[tuple[str, int]]:
        return [(command["webhook_id"], attempt) for _, command, attempt in self.endpoints.calls]

    def reason_codes(self) -> list[bytes]:
        return [headers["mailstream.reason_code"] for _, _, headers in self.flush.on("dlq")]


async def test_a_due_call_is_made_once_and_the_field_asked_for_is_kept() -> None:
    c = Calls()
    user = UserState(TENANT, "u1")
    user.enrollments["onboarding"] = {"id": "e1", "ctx": {"plan": "pro"}}
    c.users.put(0, user_key(TENANT, "u1"), user.encode())
    c.queue_call("w1", store={"from": "contact.id", "as": "crm_id"})
    c.endpoints.script["crm"] = [CallResult(None, {"contact": {"id": "c-42"}}, 201)]
    await c.dispatcher.run_round()
    assert c.record("w1").state == ATTEMPTING, "recorded before the endpoint is called"
    await asyncio.gather(*list(c.dispatcher.tasks))
    await c.round()
    record = c.record("w1")
    assert (record.state, record.provider_id, record.queue_key) == (SENT, "http_201", None)
    stored = c.users.get(0, user_key(TENANT, "u1"))
    assert stored is not None
    ctx = UserState.decode(stored).enrollments["onboarding"]["ctx"]
    assert ctx == {"plan": "pro", "crm_id": "c-42"}
    await c.round()
    assert c.called() == [("w1", 1)]
    assert list(c.queue.keys()) == []


async def test_a_failed_call_is_retried_after_its_backoff_then_given_up() -> None:
    c = Calls()
    c.queue_call("w1")
    c.endpoints.script["crm"] = [DOWN, DOWN, DOWN]
    await c.round()
    await c.round()
    record = c.record("w1")
    assert record.state == QUEUED and record.queue_key is not None
    assert QueueKey.decode(record.queue_key).ready == c.clock.ms + 1000  # half of 2 s
    await c.round()
    assert c.called() == [("w1", 1)], "not before its time"
    for _ in range(2):
        c.clock.advance(5.0)
        await c.round()
        await c.round()
    assert c.called() == [("w1", 1), ("w1", 2)], "the breaker opened after two failures"
    c.clock.advance(30.0)  # its cool-down: this call is the probe
    await c.round()
    await c.round()
    assert c.called() == [("w1", 1), ("w1", 2), ("w1", 3)]
    assert c.record("w1").state == FAILED
    assert c.reason_codes() == [b"webhook_exhausted"]


async def test_an_open_breaker_holds_calls_without_using_an_attempt() -> None:
    c = Calls()
    c.queue_call("w1")
    c.queue_call("w2")
    c.endpoints.script["crm"] = [DOWN, DOWN]
    await c.round()
    await c.round()  # both failed: the breaker opens
    c.queue_call("w3")
    await c.round()
    assert [w for w, _ in c.called()] == ["w1", "w2"]
    held = c.record("w3")
    assert (held.state, held.attempts) == (QUEUED, 0)
    assert held.queue_key is not None
    assert QueueKey.decode(held.queue_key).ready == c.clock.ms + 30_000, "until the cool-down"
    c.clock.advance(30.0)
    await c.round()
    assert c.called()[2:] == [("w1", 2)], "one probe, the call due first"
    assert (c.record("w2").attempts, c.record("w3").attempts) == (1, 0)
    w3_key = c.record("w3").queue_key
    assert w3_key is not None
    assert QueueKey.decode(w3_key).ready == c.clock.ms + 5000, "while the probe is out"
    await c.round()  # the probe succeeded: the breaker closes
    c.clock.advance(5.0)
    await c.round()
    assert sorted(c.called()[3:]) == [("w2", 2), ("w3", 1)]
    await c.round()
    assert {c.record(w).state for w in ("w1", "w2", "w3")} == {SENT}


async def test_a_4xx_fails_the_call_for_good() -> None:
    c = Calls()
    c.queue_call("w1")
    c.endpoints.script["crm"] = [
        CallResult(SendFailure("http_422", "bad email", retryable=False), None, 422)
    ]
    await c.round()
    await c.round()
    assert c.record("w1").state == FAILED
    [(_, value, headers)] = c.flush.on("dlq")
    assert headers["mailstream.reason_code"] == b"webhook_failed"
    assert headers["mailstream.reason"] == b"crm http_422: bad email"
    assert orjson.loads(value)["webhook_id"] == "w1"


async def test_a_call_not_made_in_time_expires_and_one_for_a_removed_endpoint_fails() -> None:
    c = Calls()
    c.queue_call("late", age_s=3600)
    c.queue_call("gone", endpoint="old-crm")
    await c.round()
    assert c.called() == []
    assert (c.record("late").state, c.record("gone").state) == (FAILED, FAILED)
    assert sorted(c.reason_codes()) == [b"unknown_endpoint", b"webhook_expired"]
    assert list(c.queue.keys()) == []


async def test_an_orphaned_call_is_made_again_after_a_restart() -> None:
    c = Calls()
    c.queue_call("w1")
    await c.dispatcher.run_round()  # `attempting`; the worker dies before the call
    for task in list(c.dispatcher.tasks):
        task.cancel()
    c.endpoints.calls.clear()
    c.start_worker()
    await c.round()
    assert c.called() == [("w1", 2)], "the receiver drops the repeat by the webhook id"
    await c.round()
    record = c.record("w1")
    assert record.state == SENT
    assert [h[1] for h in record.history] == ["unknown_outcome"]
