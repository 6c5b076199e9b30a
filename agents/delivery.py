"""The delivery agent: send commands in, paced and retried provider calls out, each send
id delivered once.

Two actors share the deliveries table: ``accept_sends`` records each new send command
as queued; the dispatcher takes queued sends in order (transactional first) as the
pacer allows, records ``attempting``, calls the provider without blocking anything
else, and records the outcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from mailstream import metrics
from mailstream.app import app, config, settled
from mailstream.apply import dead_letter_headers, dead_letter_message
from mailstream.backfill import (
    QUIET_SECONDS,
    Backfill,
    complete,
    consume_in_batches,
    sweep_quiet_partitions,
)
from mailstream.compose import compose, recipient_domain
from mailstream.delivery import (
    ATTEMPTING,
    FINAL,
    Delivery,
    QueueKey,
    accept,
    attempt,
    failed,
    orphaned,
    rank_bounds,
    succeeded,
)
from mailstream.health import known_workflow
from mailstream.ingest import RawMessage
from mailstream.outbox import AFTER_STATE, BEFORE_STATE, STATE_LOCK, Outbox, flush
from mailstream.providers.base import Accepted, SendFailure
from mailstream.ratelimit import DOMAIN_WAIT, GO
from mailstream.runtime import automation, delivery_runtime
from mailstream.storage import progress_key
from mailstream.suppression import Suppression
from mailstream.users import UserState, user_key
from tables.deliveries import deliveries, delivery_queue, sent_key, sent_on
from tables.users import users

logger = logging.getLogger(__name__)

SEND_TOPICS = (config.topics.sends_transactional, config.topics.sends_marketing)
sends_topic = app.topic(*SEND_TOPICS, key_serializer="raw", value_serializer="raw")
backfills = {topic: Backfill(config.bootstrap_servers, topic) for topic in SEND_TOPICS}
REQUIRED = ("send_id", "tenant_id", "user_id", "to", "category", "subject", "text", "html")
TICK_SECONDS = 0.02
RANKS = range(6)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _count_for_workflow(command: Any, result: str, event_to_send_s: float | None = None) -> None:
    """The outcome of a send, for its workflow's health (mailstream.health)."""
    name = command.get("workflow") if isinstance(command, dict) else None
    workflow = known_workflow(name, automation.engine.workflows)
    if workflow is None:
        return
    metrics.WORKFLOW_SENDS.labels(workflow, result).inc()
    if event_to_send_s is not None:
        metrics.WORKFLOW_EVENT_TO_SEND.labels(workflow).observe(event_to_send_s)


def _decode_command(value: bytes | None) -> dict[str, Any] | str:
    """The command, or why it is not one."""
    try:
        command = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(command, dict):
        return "not a JSON object"
    missing = [f for f in REQUIRED if not isinstance(command.get(f), str)]
    if missing:
        return f"missing or not a string: {', '.join(missing)}"
    if command["category"] not in ("transactional", "marketing"):
        return f"unknown category {command['category']!r}"
    return command


async def accept_batch(messages: list[RawMessage]) -> None:
    """Record each new send command as queued; a send id seen before is a duplicate."""
    now = _now_ms()
    outbox = Outbox()
    batch: dict[tuple[int, str], Delivery] = {}
    for topic in SEND_TOPICS:
        mine = [m for m in messages if m.topic == topic]
        if not mine:
            continue
        key = progress_key(topic)
        fresh, replayed = await complete(
            mine, functools.partial(deliveries.progress, key=key), backfills[topic]
        )
        metrics.REPLAYED.inc(replayed)
        for m in fresh:
            command = _decode_command(m.value)
            if isinstance(command, str):
                dead_letter_message(outbox, config.topics.dlq, m, "bad_send_command", command)
                metrics.DEAD_LETTERS.labels("bad_send_command").inc()
                continue
            send_id = command["send_id"]
            slot = (m.partition, send_id)
            existing = batch.get(slot)
            if existing is None:
                raw = deliveries.get(m.partition, send_id.encode())
                existing = Delivery.decode(raw) if raw is not None else None
            delivery = accept(existing, command, now)
            if delivery is None:
                metrics.DELIVERIES.labels(command["category"], "deduplicated").inc()
                continue
            assert delivery.queue_key is not None
            batch[slot] = delivery
            # The queued command first: a record without it would make a replay skip it.
            outbox.put(delivery_queue, m.partition, delivery.queue_key, m.value, BEFORE_STATE)
            outbox.put(deliveries, m.partition, send_id.encode(), delivery.encode())
            metrics.DELIVERIES.labels(command["category"], "queued").inc()
        outbox.put_progress(deliveries, fresh, key)
    if outbox:
        await flush(app.producer, outbox)


# The agent and the tail sweep both accept commands; one batch at a time.
ACCEPT_LOCK = asyncio.Lock()
# (topic, partition) -> when the agent last saw a message of it (monotonic seconds)
last_seen: dict[tuple[str, int], float] = {}


@app.agent(sends_topic, name="mailstream.delivery")
async def accept_sends(stream: Any) -> None:
    """Acknowledge send commands only once they are durably queued."""
    await consume_in_batches(stream, accept_batch, ACCEPT_LOCK, last_seen)


@app.timer(interval=QUIET_SECONDS)
async def sweep_skipped_send_tails() -> None:
    """Send commands the consumer skipped at the end of a quiet partition: a skipped
    receipt would otherwise wait for the next command on its partition."""
    if not settled():
        return
    partitions = deliveries.active_partitions()
    for topic in SEND_TOPICS:
        progress = functools.partial(deliveries.progress, key=progress_key(topic))
        await sweep_quiet_partitions(
            partitions, last_seen, progress, backfills[topic], accept_batch, ACCEPT_LOCK
        )


Result = tuple[int, bytes, Delivery, bytes, dict[str, Any], Accepted | SendFailure, float]


class Dispatcher:
    """Takes queued sends as the pacer allows and calls the provider for each."""

    def __init__(self) -> None:
        self.rt = delivery_runtime()
        self.inflight: set[str] = set()
        self.results: asyncio.Queue[Result] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        await self.rt.provider.start()
        try:
            while True:
                await asyncio.sleep(TICK_SECONDS)
                if not settled():
                    continue
                await self.settle()
                await self.dispatch()
        finally:
            for task in self.tasks:
                task.cancel()
            await self.rt.provider.close()

    async def dispatch(self) -> None:
        room = self.rt.concurrency - len(self.inflight)
        if room <= 0:
            return
        partitions = delivery_queue.active_partitions()
        if not partitions:
            return
        self.rt.pacer.resize(len(partitions), config.topics.partitions, time.monotonic())
        now = _now_ms()
        day = datetime.fromtimestamp(now / 1000, tz=UTC).date()
        counts = {p: sent_on(p, day.isoformat()) for p in partitions}
        sent_today = sum(counts.values())
        outbox = Outbox()
        chosen: list[tuple[int, bytes, Delivery, bytes, dict[str, Any]]] = []
        stop = False
        for r in RANKS:
            for p in partitions:
                start, end = rank_bounds(r, now)
                for key in delivery_queue.keys_between(p, start, end, room + 50):
                    verdict = self._consider(p, key, now, day, sent_today + len(chosen), outbox)
                    if verdict is None:
                        continue
                    if not isinstance(verdict, tuple):  # the pacer says stop
                        stop = True
                        break
                    chosen.append(verdict)
                    if len(chosen) >= room:
                        stop = True
                        break
                if stop:
                    break
            if stop:
                break
        for p in {c[0] for c in chosen}:
            n = sum(1 for c in chosen if c[0] == p)
            outbox.put(deliveries, p, sent_key(day.isoformat()), str(counts[p] + n).encode())
        if not outbox:
            return
        await flush(app.producer, outbox)  # `attempting` is durable before any call
        for p, key, delivery, raw, command in chosen:
            send_id = command["send_id"]
            self.inflight.add(send_id)
            task = asyncio.create_task(self._call(p, key, delivery, raw, command))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _consider(
        self, p: int, key: bytes, now: int, day: Any, sent_today: int, outbox: Outbox
    ) -> tuple[int, bytes, Delivery, bytes, dict[str, Any]] | bool | None:
        """A queued send: chosen (with its command), None to skip it, False to stop."""
        qk = QueueKey.decode(key)
        if qk.send_id in self.inflight:
            return None
        record = deliveries.get(p, qk.send_id.encode())
        delivery = Delivery.decode(record) if record is not None else None
        if delivery is None or delivery.queue_key != key or delivery.state in FINAL:
            outbox.put(delivery_queue, p, key, None, AFTER_STATE)  # left by a crash
            return None
        if delivery.state == ATTEMPTING:
            # Attempting, but not by this process: its worker died during the call.
            requeued = orphaned(delivery, now)
            outbox.put(deliveries, p, qk.send_id.encode(), delivery.encode())
            if not requeued:
                # Listed on the dead-letter topic, so an operator can check with the provider.
                outbox.put(delivery_queue, p, key, None, AFTER_STATE)
                reason = (
                    "the worker stopped while the provider was called; marketing is not sent"
                    " twice, so whether it was delivered is unknown"
                )
                headers = dead_letter_headers("unknown_outcome", reason, "delivery", p, -1)
                value = delivery_queue.get(p, key) or b""
                outbox.send(config.topics.dlq, delivery.user_id.encode(), value, headers)
                metrics.DEAD_LETTERS.labels("unknown_outcome").inc()
                _count_for_workflow(orjson.loads(value) if value else None, "unknown")
                logger.warning("send %s: %s", qk.send_id, reason)
            metrics.DELIVERIES.labels(
                delivery.category, "requeued" if requeued else "unknown"
            ).inc()
            return None
        raw = delivery_queue.get(p, key)
        if raw is None:
            return None
        command = orjson.loads(raw)
        admission = self.rt.pacer.admit(
            recipient_domain(command["to"]), time.monotonic(), day, sent_today
        )
        if admission.verdict == DOMAIN_WAIT:
            return None
        if admission.verdict != GO:
            metrics.PACER_WAITS.labels(admission.verdict).inc()
            return False
        attempt(delivery, now)
        outbox.put(deliveries, p, qk.send_id.encode(), delivery.encode())
        return p, key, delivery, raw, command

    async def _call(
        self, p: int, key: bytes, delivery: Delivery, raw: bytes, command: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        outcome: Accepted | SendFailure
        try:
            outcome = await self.rt.provider.send(compose(command, self.rt.sender, self.rt.tokens))
        except SendFailure as failure:
            outcome = failure
        except Exception as exc:  # a provider bug must not lose the send
            logger.exception("provider %s failed unexpectedly", self.rt.provider.name)
            outcome = SendFailure("error", repr(exc), retryable=True)
        await self.results.put((p, key, delivery, raw, command, outcome, started))

    async def settle(self) -> None:
        """Record the outcomes of finished calls, in one flush."""
        if self.results.empty():
            return
        finished: list[Result] = []
        while not self.results.empty():
            finished.append(self.results.get_nowait())
        now = _now_ms()
        outbox = Outbox()
        suppress: list[tuple[int, dict[str, Any], SendFailure]] = []
        provider = self.rt.provider.name
        for p, key, delivery, raw, command, outcome, started in finished:
            send_id = command["send_id"]
            category = delivery.category
            metrics.PROVIDER_SECONDS.labels(provider).observe(time.perf_counter() - started)
            if isinstance(outcome, Accepted):
                succeeded(delivery, outcome, now)
                event_at = command.get("event_at")
                waited = None
                if isinstance(event_at, int) and delivery.attempts == 1:
                    waited = max(0, now - event_at) / 1000
                    metrics.EVENT_TO_SEND.observe(waited)
                outbox.put(delivery_queue, p, key, None, AFTER_STATE)
                metrics.SENDS.labels(provider, category, "sent").inc()
                _count_for_workflow(command, "sent", waited)
            else:
                result = failed(delivery, outcome, self.rt.retry, now, random.random())
                if result.retry_at is not None:
                    assert delivery.queue_key is not None
                    outbox.put(delivery_queue, p, delivery.queue_key, raw, BEFORE_STATE)
                    outbox.put(delivery_queue, p, key, None, AFTER_STATE)
                    metrics.SENDS.labels(provider, category, "retry").inc()
                    _count_for_workflow(command, "retry")
                else:
                    outbox.put(delivery_queue, p, key, None, AFTER_STATE)
                    self._dead_letter(outbox, p, raw, command, delivery, outcome, result.reason)
                    metrics.SENDS.labels(provider, category, result.reason).inc()
                    _count_for_workflow(command, result.reason)
                    if result.suppress:
                        suppress.append((p, command, outcome))
            outbox.put(deliveries, p, send_id.encode(), delivery.encode())
        if suppress:
            async with STATE_LOCK:  # user records are the ingest agent's too
                for p, command, failure in suppress:
                    self._suppress(outbox, p, command, failure, now)
                await flush(app.producer, outbox)
        else:
            await flush(app.producer, outbox)
        for *_, command, _, _ in finished:
            self.inflight.discard(command["send_id"])

    def _dead_letter(
        self,
        outbox: Outbox,
        p: int,
        raw: bytes,
        command: dict[str, Any],
        delivery: Delivery,
        failure: SendFailure,
        reason: str,
    ) -> None:
        code = "delivery_failed" if reason == "permanent" else "delivery_exhausted"
        text = f"{self.rt.provider.name} {failure.code}: {failure.message}"
        if reason == "exhausted":
            text = f"gave up after {delivery.attempts} attempts; last: {text}"
        headers = dead_letter_headers(code, text, "delivery", p, -1)
        headers.append(("mailstream.attempts", orjson.dumps(delivery.history)))
        outbox.send(config.topics.dlq, command["user_id"].encode(), raw, headers)
        metrics.DEAD_LETTERS.labels(code).inc()

    def _suppress(
        self, outbox: Outbox, p: int, command: dict[str, Any], failure: SendFailure, now: int
    ) -> None:
        """An address the provider says does not exist: a hard bounce, so no more email."""
        key = user_key(command["tenant_id"], command["user_id"])
        stored = users.get(p, key)
        if stored is None:
            return
        user = UserState.decode(stored)
        source = f"delivery:{self.rt.provider.name}:{failure.code}"
        user.suppressions["hard_bounce"] = Suppression("hard_bounce", source, now)
        outbox.put(users, p, key, user.encode())
        metrics.SUPPRESSED.labels("hard_bounce").inc()


@app.task
async def run_dispatcher() -> None:
    dispatcher = Dispatcher()
    try:
        await dispatcher.run()
    finally:
        for backfill in backfills.values():
            await backfill.close()
