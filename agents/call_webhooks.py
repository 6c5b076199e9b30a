"""The webhook agent: webhook step commands in, signed calls out, each webhook id called
until it succeeds once, with retries and a circuit breaker per URL.

As with email delivery, two actors share the webhook calls table: ``accept_commands``
records each new command as queued; the dispatcher takes calls that are due, records
``attempting`` (acknowledged by the broker) before each call, makes the calls without
blocking anything else, and records the outcomes. A field of an answer a step asked to
keep goes into the user's enrollment context, in the same flush as the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import orjson

from mailstream.app import app, config, settled
from mailstream.config.webhooks_out_settings import Endpoint, build_endpoints
from mailstream.core.ingest_batch import RawMessage
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery.guarded_loop import GuardedLoop, Suspect, dead_letter_queued
from mailstream.delivery.state_machine import (
    ATTEMPTING,
    FAILED,
    FINAL,
    Delivery,
    QueueKey,
    attempt,
    failed,
    orphaned,
    succeeded,
)
from mailstream.kafka.backfill import QUIET_SECONDS, Intake
from mailstream.kafka.partitioning import misplaced, partition_count
from mailstream.observability import metrics
from mailstream.providers.base import Accepted, SendFailure
from mailstream.runtime.components import cluster
from mailstream.state.staged_flush import AFTER_STATE, BEFORE_STATE, STATE_LOCK, Outbox, flush
from mailstream.webhooks_out.call_command import decode_command, pick, verified_command
from mailstream.webhooks_out.call_state import (
    accept_call,
    breaker_failure,
    expire,
    expired,
    hold,
    ready_bounds,
)
from mailstream.webhooks_out.circuit_breaker import PROBE, STATE_VALUES, Breaker
from mailstream.webhooks_out.poster import CallResult, WebhookClient
from mailstream.workflows.apply_effects import dead_letter_headers, dead_letter_message
from tables.users import users
from tables.webhook_calls import webhook_calls, webhook_queue

logger = logging.getLogger(__name__)

TOPIC = config.topics.webhooks
webhooks_topic = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
# The agent and the tail sweep both accept commands, one batch at a time.
intake = Intake(webhook_calls, [TOPIC], config.bootstrap_servers)
endpoints = build_endpoints(config.webhooks_out)
TICK_SECONDS = 0.05
CONCURRENCY = 32  # calls in flight per worker, all endpoints together
STORE_MAX_BYTES = 4096  # a stored answer field is kept in the user's record: keep it small


def _now_ms() -> int:
    return int(time.time() * 1000)


def _what(state: str, queue_key: bytes, partition: int) -> str:
    """A call for a log line, even from a key that does not decode."""
    try:
        webhook_id = QueueKey.decode(queue_key).send_id
    except Exception:
        webhook_id = repr(queue_key)
    return f"{state} webhook call {webhook_id} on partition {partition}"


def _label(name: str) -> str:
    """Endpoint names from the config only, so the metric labels stay bounded."""
    return name if name in endpoints else "unknown"


async def accept_batch(messages: list[RawMessage]) -> None:
    """Record each new command as queued; a webhook id seen before is a duplicate."""
    now = _now_ms()
    outbox = Outbox()
    fresh = await intake.fresh(messages, TOPIC)
    partitions = await partition_count(app.producer, TOPIC) if fresh else None
    batch: dict[tuple[int, str], Delivery] = {}
    for m in fresh:
        # Only what a worker of this deployment wrote, where it wrote it: the endpoint's
        # signature would otherwise vouch for anything anyone with access to the broker
        # put here, or for a command called again from another partition.
        wrong = misplaced(m.key, m.partition, partitions)
        if wrong is not None:
            dead_letter_message(outbox, config.topics.dlq, m, "misplaced_command", wrong)
            metrics.DEAD_LETTERS.labels("misplaced_command").inc()
            metrics.WEBHOOK_COMMANDS.labels("unknown", "untrusted").inc()
            continue
        signed = verified_command(cluster, m.key, m.value)
        if isinstance(signed, str):
            dead_letter_message(outbox, config.topics.dlq, m, "untrusted_command", signed)
            metrics.DEAD_LETTERS.labels("untrusted_command").inc()
            metrics.WEBHOOK_COMMANDS.labels("unknown", "untrusted").inc()
            logger.warning(
                "webhook command on %s[%d] at offset %d dead-lettered: %s",
                m.topic,
                m.partition,
                m.offset,
                signed,
            )
            continue
        command = decode_command(signed)
        if isinstance(command, str):
            dead_letter_message(outbox, config.topics.dlq, m, "bad_webhook_command", command)
            metrics.DEAD_LETTERS.labels("bad_webhook_command").inc()
            metrics.WEBHOOK_COMMANDS.labels("unknown", "bad_command").inc()
            continue
        name = command["endpoint"]
        if name not in endpoints:
            reason = f"endpoint {name!r} is not under webhooks_out ({', '.join(endpoints)})"
            dead_letter_message(outbox, config.topics.dlq, m, "unknown_endpoint", reason)
            metrics.DEAD_LETTERS.labels("unknown_endpoint").inc()
            metrics.WEBHOOK_COMMANDS.labels("unknown", "unknown_endpoint").inc()
            continue
        webhook_id = command["webhook_id"]
        slot = (m.partition, webhook_id)
        existing = batch.get(slot)
        if existing is None:
            raw = webhook_calls.get(m.partition, webhook_id.encode())
            existing = Delivery.decode(raw) if raw is not None else None
        call = accept_call(existing, command, now)
        if call is None:
            metrics.WEBHOOK_COMMANDS.labels(name, "deduplicated").inc()
            continue
        assert call.queue_key is not None
        batch[slot] = call
        # The queued command first: a record without it would make a replay skip it.
        outbox.put(webhook_queue, m.partition, call.queue_key, m.value, BEFORE_STATE)
        outbox.put(webhook_calls, m.partition, webhook_id.encode(), call.encode())
        metrics.WEBHOOK_COMMANDS.labels(name, "queued").inc()
    intake.put_progress(outbox, fresh, TOPIC)
    if outbox:
        await flush(app.producer, outbox)


@app.agent(webhooks_topic, name="mailstream.webhooks")
async def accept_commands(stream: Any) -> None:
    """Acknowledge webhook commands only once they are durably queued."""
    await intake.consume(stream, accept_batch)


@app.timer(interval=QUIET_SECONDS)
async def sweep_skipped_webhook_tails() -> None:
    """Commands the consumer skipped at the end of a quiet partition."""
    if settled():
        await intake.sweep(accept_batch)


# partition, queue key, record, command as queued, command, endpoint, breaker ticket
Chosen = tuple[int, bytes, Delivery, bytes, dict[str, Any], Endpoint, str]


Finished = tuple[Chosen, CallResult, float]


class Dispatcher(GuardedLoop):
    """Takes due calls, asks each URL's breaker, and calls the endpoints. A round that
    raises is retried after a backoff; a call that keeps making rounds raise is
    dead-lettered (mailstream.delivery.guarded_loop)."""

    def __init__(self, endpoints: dict[str, Endpoint]) -> None:
        super().__init__("webhooks", TICK_SECONDS, settled)
        self.endpoints = endpoints
        self.client = WebhookClient(endpoints)
        self.breakers: dict[str, Breaker] = {}  # by URL: endpoints sharing one share it
        self.inflight: set[str] = set()
        self.results: asyncio.Queue[Finished] = asyncio.Queue()
        # Finished calls whose outcome is not yet durable: kept until a settle flush
        # succeeds, so a failed round loses none of them.
        self.settling: list[Finished] = []
        self.tasks: set[asyncio.Task[None]] = set()
        for name in endpoints:
            metrics.WEBHOOK_BREAKER.labels(name).set(0)

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
            for task in self.tasks:
                task.cancel()
            await self.client.close()

    async def run_round(self) -> None:
        await self.settle()
        await self.dispatch()

    async def dispatch(self) -> None:
        room = CONCURRENCY - len(self.inflight)
        if room <= 0:
            return
        now = _now_ms()
        mono = time.monotonic()
        start, end = ready_bounds(now)
        outbox = Outbox()
        chosen: list[Chosen] = []
        try:
            for p in webhook_queue.active_partitions():
                for key in webhook_queue.keys_between(p, start, end, room + 50):
                    self.suspect = Suspect((p, key), _what("queued", key, p), (p, key, None))
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
            await flush(app.producer, outbox)  # `attempting` is durable before any call
        except BaseException:  # none of them is called: their probes are not out
            for c in chosen:
                if c[6] == PROBE:
                    self.breaker(c[5]).abandon_probe()
            raise
        for c in chosen:
            self.inflight.add(c[4]["webhook_id"])
            task = asyncio.create_task(self._call(c))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _consider(self, p: int, key: bytes, now: int, mono: float, outbox: Outbox) -> Chosen | None:
        """A due call: chosen to be made now, or None (held, finished, or left by a crash)."""
        qk = QueueKey.decode(key)
        if qk.send_id in self.inflight:
            return None
        record = webhook_calls.get(p, qk.send_id.encode())
        call = Delivery.decode(record) if record is not None else None
        raw = webhook_queue.get(p, key)
        if call is None or call.queue_key != key or call.state in FINAL or raw is None:
            outbox.put(webhook_queue, p, key, None, AFTER_STATE)  # left by a crash
            return None
        command = orjson.loads(raw)
        endpoint = self.endpoints.get(command["endpoint"])
        if endpoint is None:  # the config dropped it since the command was queued
            self._give_up(outbox, p, key, raw, call, "unknown_endpoint", now)
            return None
        if call.state == ATTEMPTING:
            # Attempting, but not by this process: its worker died during the call. The
            # receiver may have it; it drops the repeat by the webhook id.
            orphaned(call, now, resend=True)
            outbox.put(webhook_calls, p, qk.send_id.encode(), call.encode())
            metrics.WEBHOOK_COMMANDS.labels(endpoint.name, "requeued").inc()
        if expired(command, endpoint.give_up_after_ms, now):
            expire(call, now, endpoint.give_up_after_ms)
            metrics.WEBHOOK_CALLS.labels(endpoint.name, "expired").inc()
            self._give_up(outbox, p, key, raw, call, "webhook_expired", now)
            return None
        breaker = self.breaker(endpoint)
        before = breaker.state
        ticket = breaker.allow(mono)
        if breaker.state != before:
            self._show(endpoint, breaker.state)
        if ticket is None:
            # Fail fast: no request while the breaker is open. The call is not lost and
            # uses no attempt: it waits for the moment the breaker lets calls through.
            until_mono = breaker.hold_until(mono)
            wait = until_mono - mono if until_mono is not None else endpoint.timeout
            hold(call, now + max(1, int(wait * 1000)))
            assert call.queue_key is not None
            outbox.put(webhook_queue, p, call.queue_key, raw, BEFORE_STATE)
            outbox.put(webhook_queue, p, key, None, AFTER_STATE)
            outbox.put(webhook_calls, p, qk.send_id.encode(), call.encode())
            metrics.WEBHOOK_CALLS.labels(endpoint.name, "short_circuited").inc()
            return None
        attempt(call, now)
        outbox.put(webhook_calls, p, qk.send_id.encode(), call.encode())
        return p, key, call, raw, command, endpoint, ticket

    async def _call(self, chosen: Chosen) -> None:
        _, _, call, _, command, endpoint, _ = chosen
        started = time.perf_counter()
        try:
            result = await self.client.call(endpoint, command, call.attempts)
        except Exception as exc:  # a bug here must not lose the call
            logger.exception("webhook endpoint %s: the call failed unexpectedly", endpoint.name)
            result = CallResult(SendFailure("error", type(exc).__name__, retryable=True))
        await self.results.put((chosen, result, started))

    async def settle(self) -> None:
        """Record the outcomes of finished calls, in one flush."""
        while not self.results.empty():
            self.settling.append(self.results.get_nowait())
        if not self.settling:
            return
        finished = list(self.settling)
        now = _now_ms()
        outbox = Outbox()
        stores: list[tuple[Suspect, int, dict[str, Any], Endpoint, dict[str, Any] | None]] = []
        for item in finished:
            chosen, result, started = item
            p, key, _, raw, command, endpoint, ticket = chosen
            suspect = self.suspect = Suspect((p, key), _what("finished", key, p), (p, key, item))
            call = chosen[2].copy()  # a failed round leaves the result as it came
            name = endpoint.name
            metrics.WEBHOOK_SECONDS.labels(name).observe(time.perf_counter() - started)
            failure = result.failure
            if failure is None:
                succeeded(call, Accepted(f"http_{result.status}"), now)
                outbox.put(webhook_queue, p, key, None, AFTER_STATE)
                metrics.WEBHOOK_CALLS.labels(name, "delivered").inc()
                if command.get("store"):
                    stores.append((suspect, p, command, endpoint, result.answer))
            else:
                outcome = failed(call, failure, endpoint.retry, now, random.random())
                if outcome.retry_at is not None:
                    assert call.queue_key is not None
                    outbox.put(webhook_queue, p, call.queue_key, raw, BEFORE_STATE)
                    outbox.put(webhook_queue, p, key, None, AFTER_STATE)
                    metrics.WEBHOOK_CALLS.labels(name, "retry").inc()
                else:
                    permanent = outcome.reason == "permanent"
                    code = "webhook_failed" if permanent else "webhook_exhausted"
                    self._dead_letter(outbox, p, raw, call, code, f"{name} {failure}")
                    outbox.put(webhook_queue, p, key, None, AFTER_STATE)
                    metrics.WEBHOOK_CALLS.labels(name, "failed" if permanent else "exhausted").inc()
            outbox.put(webhook_calls, p, command["webhook_id"].encode(), call.encode())
        if stores:
            async with STATE_LOCK:  # user records are the ingest agent's too
                for suspect, p, command, endpoint, answer in stores:
                    self.suspect = suspect
                    self._store(outbox, p, command, endpoint, answer)
                self.suspect = None
                await flush(app.producer, outbox)
        else:
            self.suspect = None
            await flush(app.producer, outbox)
        del self.settling[: len(finished)]
        # The breakers learn each outcome once, when it is recorded for good.
        mono = time.monotonic()
        for chosen, result, _ in finished:
            self.inflight.discard(chosen[4]["webhook_id"])
            endpoint, ticket = chosen[5], chosen[6]
            breaker = self.breaker(endpoint)
            moved = breaker.record(not breaker_failure(result.failure), mono, ticket == PROBE)
            if moved is not None:
                self._show(endpoint, moved)

    async def give_up(self, suspect: Suspect, reason: str) -> None:
        """A call the dispatcher keeps failing on: dead-lettered, off the queue, its record
        final, so it is neither lost silently nor made again."""
        p, key, item = suspect.item
        now = _now_ms()
        raw = item[0][3] if item is not None else webhook_queue.get(p, key)
        if item is not None:
            failure = item[1].failure
            reason += "; the call had succeeded" if failure is None else f"; the call: {failure}"
        webhook_id = QueueKey.decode(key).send_id
        outbox = Outbox()
        dead_letter_queued(
            outbox,
            webhook_calls,
            webhook_queue,
            p,
            key,
            webhook_id.encode(),
            command=raw,
            reason=reason,
            source="webhooks",
            dlq_topic=config.topics.dlq,
            now=now,
        )
        await flush(app.producer, outbox)
        metrics.DEAD_LETTERS.labels("dispatcher_error").inc()
        if item is not None:
            self.settling.remove(item)
            self.inflight.discard(webhook_id)
            if item[0][6] == PROBE:  # its outcome never reaches the breaker
                self.breaker(item[0][5]).abandon_probe()

    def _give_up(
        self, outbox: Outbox, p: int, key: bytes, raw: bytes, call: Delivery, code: str, now: int
    ) -> None:
        if code == "unknown_endpoint":
            call.state, call.queue_key, call.updated = FAILED, None, now
            call.history.append([now, code, "the endpoint is no longer configured"])
        qk = QueueKey.decode(key)
        outbox.put(webhook_queue, p, key, None, AFTER_STATE)
        outbox.put(webhook_calls, p, qk.send_id.encode(), call.encode())
        self._dead_letter(outbox, p, raw, call, code, call.history[-1][2])

    def _dead_letter(
        self, outbox: Outbox, p: int, raw: bytes, call: Delivery, code: str, text: str
    ) -> None:
        if code == "webhook_exhausted":
            text = f"gave up after {call.attempts} attempts; last: {text}"
        headers = dead_letter_headers(code, text, "webhooks", p, -1)
        headers.append(("mailstream.attempts", orjson.dumps(call.history)))
        outbox.send(config.topics.dlq, call.user_id.encode(), raw, headers)
        metrics.DEAD_LETTERS.labels(code).inc()

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
        stored = outbox.get(users, p, key)
        user = UserState.decode(stored) if stored is not None else None
        enrollment = user.enrollments.get(command["workflow"]) if user is not None else None
        if user is None or enrollment is None or enrollment["id"] != command["enrollment_id"]:
            metrics.WEBHOOK_STORED.labels(endpoint.name, "no_enrollment").inc()
            return
        enrollment["ctx"] = {**enrollment["ctx"], store["as"]: value}
        outbox.put(users, p, key, user.encode())
        metrics.WEBHOOK_STORED.labels(endpoint.name, "stored").inc()


@app.task
async def run_webhook_dispatcher() -> None:
    dispatcher = Dispatcher(endpoints)
    try:
        await dispatcher.run()
    finally:
        await intake.close()
