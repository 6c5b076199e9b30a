"""The webhook dispatcher: takes calls that are due, asks each URL's circuit breaker,
records ``attempting`` (acknowledged by the broker) before each call, makes the calls
without blocking anything else, and records the outcomes. A field of an answer a step
asked to keep goes into the user's enrollment context, in the same flush as the outcome.

The decisions are mailstream.delivery.dispatch_plan's, .settlement's and
mailstream.webhooks_out.call_state's; this reads the tables and the clocks, and writes
and calls.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from mailstream.config.webhooks_out_settings import Endpoint
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery.dispatch_plan import (
    DeadLetterNote,
    Taken,
    resolve_orphan,
)
from mailstream.delivery.dispatch_shell import CallsInFlight, Flush, QueueTables
from mailstream.delivery.guarded_loop import Suspect
from mailstream.delivery.settlement import EXHAUSTED, RETRY, SENT, settle
from mailstream.delivery.state_machine import ATTEMPTING, Delivery, QueueKey, attempt
from mailstream.observability import metrics
from mailstream.providers.base import Accepted, SendFailure
from mailstream.state.staged_flush import STATE_LOCK, Outbox
from mailstream.webhooks_out.call_command import pick
from mailstream.webhooks_out.call_state import (
    breaker_failure,
    breaker_wait_until,
    endpoint_gone,
    expire,
    expired,
    hold,
    ready_bounds,
)
from mailstream.webhooks_out.circuit_breaker import PROBE, STATE_VALUES, Breaker
from mailstream.webhooks_out.poster import CallResult, WebhookClient

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.05
CONCURRENCY = 32  # calls in flight per worker, all endpoints together
STORE_MAX_BYTES = 4096  # a stored answer field is kept in the user's record: keep it small


@dataclass(frozen=True, slots=True, eq=False)
class ChosenCall:
    """A call taken, with its endpoint and the breaker's ticket (CALL or PROBE)."""

    taken: Taken
    endpoint: Endpoint
    ticket: str


@dataclass(frozen=True, slots=True, eq=False)
class FinishedCall:
    chosen: ChosenCall
    result: CallResult
    started: float  # perf_counter


def describe(state: str, queue_key: bytes, partition: int) -> str:
    """A call for a log line, even from a key that does not decode."""
    try:
        webhook_id = QueueKey.decode(queue_key).send_id
    except Exception:
        webhook_id = repr(queue_key)
    return f"{state} webhook call {webhook_id} on partition {partition}"


def as_outcome(result: CallResult) -> Accepted | SendFailure:
    return Accepted(f"http_{result.status}") if result.failure is None else result.failure


class CallDispatcher(CallsInFlight[FinishedCall]):
    """Takes due calls, asks each URL's breaker, and calls the endpoints. A round that
    raises is retried after a backoff; a call that keeps making rounds raise is
    dead-lettered (mailstream.delivery.guarded_loop)."""

    def __init__(
        self,
        *,
        endpoints: dict[str, Endpoint],
        tables: QueueTables,
        users: Any,
        flush: Flush,
        ready: Callable[[], bool],
        client: Any = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__("webhooks", TICK_SECONDS, ready)
        self.endpoints, self.tables, self.users, self.flush = endpoints, tables, users, flush
        self.client = client if client is not None else WebhookClient(endpoints)
        self.clock, self.monotonic, self.jitter = clock, monotonic, jitter
        self.breakers: dict[str, Breaker] = {}  # by URL: endpoints sharing one share it
        for name in endpoints:
            metrics.WEBHOOK_BREAKER.labels(name).set(0)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def breaker(self, endpoint: Endpoint) -> Breaker:
        found = self.breakers.get(endpoint.url)
        if found is None:
            found = self.breakers[endpoint.url] = Breaker(endpoint.breaker)
        return found

    def _show(self, endpoint: Endpoint, state: str) -> None:
        for e in self.endpoints.values():
            if e.url == endpoint.url:
                metrics.WEBHOOK_BREAKER.labels(e.name).set(STATE_VALUES[state])
        metrics.WEBHOOK_BREAKER_TRANSITIONS.labels(endpoint.name, state).inc()
        logger.info("webhook endpoint %s: circuit breaker %s", endpoint.name, state)

    async def run(self) -> None:
        await self.client.start()
        try:
            await self.loop()
        finally:
            self.cancel_calls()
            await self.client.close()

    async def run_round(self) -> None:
        await self.settle()
        await self.dispatch()

    async def dispatch(self) -> None:
        room = CONCURRENCY - len(self.inflight)
        if room <= 0:
            return
        now, mono = self.now_ms(), self.monotonic()
        start, end = ready_bounds(now)
        outbox = Outbox()
        chosen: list[ChosenCall] = []
        try:
            for p in self.tables.queue.active_partitions():
                for key in self.tables.queue.keys_between(p, start, end, room + 50):
                    self.suspect = Suspect((p, key), describe("queued", key, p), (p, key, None))
                    picked = self._consider(p, key, now, mono, outbox)
                    self.suspect = None
                    if picked is not None:
                        chosen.append(picked)
                        if len(chosen) >= room:
                            break
                if len(chosen) >= room:
                    break
            if not outbox:
                return
            await self.flush(outbox)  # `attempting` is durable before any call
        except BaseException:  # none of them is called: their probes are not out
            for c in chosen:
                if c.ticket == PROBE:
                    self.breaker(c.endpoint).abandon_probe()
            raise
        for c in chosen:
            self.inflight.add(c.taken.record_key)
            self.spawn(self._call(c))

    def _consider(
        self, p: int, key: bytes, now: int, mono: float, outbox: Outbox
    ) -> ChosenCall | None:
        """A due call: chosen to be made now, or None (held, finished, or left by a crash)."""
        t = self.tables
        record_key = QueueKey.decode(key).send_id.encode()
        entry = t.entry(outbox, p, key, record_key, record_key in self.inflight)
        if entry is None:
            return None
        assert entry.record is not None and entry.raw is not None
        call, raw = entry.record, entry.raw
        command = orjson.loads(raw)
        endpoint = self.endpoints.get(command["endpoint"])
        if endpoint is None:  # the config dropped it since the command was queued
            endpoint_gone(call, now)
            self._give_up(outbox, p, key, record_key, raw, call, "unknown_endpoint")
            return None
        if call.state == ATTEMPTING:
            # Attempting, but not by this process: its worker died during the call. The
            # receiver may have it; it drops the repeat by the webhook id.
            resolve_orphan(call, now, resend=True)
            t.write(outbox, p, record_key, call)
            metrics.WEBHOOK_COMMANDS.labels(endpoint.name, "requeued").inc()
        if expired(command, endpoint.give_up_after_ms, now):
            expire(call, now, endpoint.give_up_after_ms)
            metrics.WEBHOOK_CALLS.labels(endpoint.name, "expired").inc()
            self._give_up(outbox, p, key, record_key, raw, call, "webhook_expired")
            return None
        breaker = self.breaker(endpoint)
        before = breaker.state
        ticket = breaker.allow(mono)
        if breaker.state != before:
            self._show(endpoint, breaker.state)
        if ticket is None:
            # Fail fast: no request while the breaker is open. The call is not lost and
            # uses no attempt: it waits for the moment the breaker lets calls through.
            hold(call, breaker_wait_until(now, mono, breaker.hold_until(mono), endpoint.timeout))
            assert call.queue_key is not None
            t.requeue(outbox, p, key, call.queue_key, raw)
            t.write(outbox, p, record_key, call)
            metrics.WEBHOOK_CALLS.labels(endpoint.name, "short_circuited").inc()
            return None
        attempt(call, now)
        t.write(outbox, p, record_key, call)
        return ChosenCall(Taken(p, key, record_key, call, raw, command), endpoint, ticket)

    def _give_up(
        self,
        outbox: Outbox,
        p: int,
        key: bytes,
        record_key: bytes,
        raw: bytes,
        call: Delivery,
        code: str,
    ) -> None:
        """A call that will not be made (``call`` already final): off the queue, listed."""
        self.tables.drop(outbox, p, key)
        self.tables.write(outbox, p, record_key, call)
        self.tables.dead_letter(outbox, p, call, raw, DeadLetterNote(code, call.history[-1][2]))

    async def _call(self, chosen: ChosenCall) -> None:
        endpoint, taken = chosen.endpoint, chosen.taken
        started = time.perf_counter()
        try:
            result = await self.client.call(endpoint, taken.command, taken.record.attempts)
        except Exception as exc:  # a bug here must not lose the call
            logger.exception("webhook endpoint %s: the call failed unexpectedly", endpoint.name)
            result = CallResult(SendFailure("error", type(exc).__name__, retryable=True))
        await self.results.put(FinishedCall(chosen, result, started))

    def taken_of(self, item: FinishedCall) -> Taken:
        return item.chosen.taken

    async def settle(self) -> None:
        """Record the outcomes of finished calls, in one flush."""
        finished = self.collect(set(self.tables.queue.active_partitions()))
        if not finished:
            return
        now = self.now_ms()
        outbox = Outbox()
        stores: list[FinishedCall] = []
        for item in finished:
            taken, name = item.chosen.taken, item.chosen.endpoint.name
            p, key = taken.partition, taken.queue_key
            self.suspect = Suspect((p, key), describe("finished", key, p), (p, key, item))
            metrics.WEBHOOK_SECONDS.labels(name).observe(time.perf_counter() - item.started)
            s = settle(
                taken.record,
                as_outcome(item.result),
                item.chosen.endpoint.retry,
                now,
                self.jitter(),
                "webhook",
                name,
            )
            self.tables.settled(outbox, p, key, taken.record_key, taken.raw, s)
            if s.result == SENT:
                metrics.WEBHOOK_CALLS.labels(name, "delivered").inc()
                if taken.command.get("store"):
                    stores.append(item)
            elif s.result == RETRY:
                metrics.WEBHOOK_CALLS.labels(name, "retry").inc()
            else:
                metrics.WEBHOOK_CALLS.labels(
                    name, "exhausted" if s.result == EXHAUSTED else "failed"
                ).inc()
        if stores:
            async with STATE_LOCK:  # user records are the ingest agent's too
                for item in stores:
                    taken = item.chosen.taken
                    p, key = taken.partition, taken.queue_key
                    self.suspect = Suspect((p, key), describe("finished", key, p), (p, key, item))
                    self._store(outbox, p, taken.command, item.chosen.endpoint, item.result.answer)
                self.suspect = None
                await self.flush(outbox)
        else:
            self.suspect = None
            await self.flush(outbox)
        self.recorded(finished)
        # The breakers learn each outcome once, when it is recorded for good.
        mono = self.monotonic()
        for item in finished:
            self.inflight.discard(item.chosen.taken.record_key)
            endpoint, ticket = item.chosen.endpoint, item.chosen.ticket
            breaker = self.breaker(endpoint)
            moved = breaker.record(not breaker_failure(item.result.failure), mono, ticket == PROBE)
            if moved is not None:
                self._show(endpoint, moved)

    async def give_up(self, suspect: Suspect, reason: str) -> None:
        """A call the dispatcher keeps failing on: dead-lettered, off the queue, its record
        final, so it is neither lost silently nor made again."""
        p, key, item = suspect.item
        if item is not None:
            failure = item.result.failure
            reason += "; the call had succeeded" if failure is None else f"; the call: {failure}"
        record_key = QueueKey.decode(key).send_id.encode()
        outbox = Outbox()
        raw = item.chosen.taken.raw if item is not None else None
        self.tables.give_up(outbox, p, key, record_key, raw, reason, self.now_ms())
        await self.flush(outbox)
        metrics.DEAD_LETTERS.labels("dispatcher_error").inc()
        if item is not None:
            self.settling.remove(item)
            self.inflight.discard(record_key)
            if item.chosen.ticket == PROBE:  # its outcome never reaches the breaker
                self.breaker(item.chosen.endpoint).abandon_probe()

    def _store(
        self,
        outbox: Outbox,
        p: int,
        command: dict[str, Any],
        endpoint: Endpoint,
        answer: dict[str, Any] | None,
    ) -> None:
        """The answer field the step asked for, into the context of the enrollment that
        made the call (if it is still there): later steps and templates see it."""
        store = command["store"]
        found, value = pick(answer, store["from"]) if answer is not None else (False, None)
        if not found:
            metrics.WEBHOOK_STORED.labels(endpoint.name, "missing").inc()
            return
        if len(orjson.dumps(value)) > STORE_MAX_BYTES:
            metrics.WEBHOOK_STORED.labels(endpoint.name, "too_large").inc()
            return
        key = user_key(command["tenant_id"], command["user_id"])
        stored = outbox.get(self.users, p, key)
        user = UserState.decode(stored) if stored is not None else None
        enrollment = user.enrollments.get(command["workflow"]) if user is not None else None
        if user is None or enrollment is None or enrollment["id"] != command["enrollment_id"]:
            metrics.WEBHOOK_STORED.labels(endpoint.name, "no_enrollment").inc()
            return
        enrollment["ctx"] = {**enrollment["ctx"], store["as"]: value}
        outbox.put(self.users, p, key, user.encode())
        metrics.WEBHOOK_STORED.labels(endpoint.name, "stored").inc()
