"""The delivery agent: send commands in, paced and retried provider calls out, each send
id delivered once.

Two actors share the deliveries table: ``accept_sends`` (or the direct reader) records
each new send command as queued; the dispatcher takes queued sends in order
(transactional first) as the pacer allows, records ``attempting``, calls the provider
without blocking anything else, and records the outcome. What the intake accepts is
made durable by the dispatcher's next round, in that round's one flush.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from faust.types import TP

from mailstream.app import app, close_when_stopping, config, settled
from mailstream.core.events import valid_tenant
from mailstream.core.ingest_batch import RawMessage
from mailstream.core.tenants import over_daily_quota
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery.compose import compose, recipient_domain
from mailstream.delivery.fair_share import CHOSEN, CLASSES, LANE_DONE, SKIP, STOP, TENANT_WAIT
from mailstream.delivery.guarded_loop import GuardedLoop, Suspect, dead_letter_queued
from mailstream.delivery.pacing import DOMAIN_WAIT, GO
from mailstream.delivery.send_command import verified_send_command
from mailstream.delivery.state_machine import (
    ATTEMPTING,
    FINAL,
    Delivery,
    QueueKey,
    accept,
    attempt,
    delivery_key,
    dropped,
    failed,
    orphaned,
    postponed,
    rank_bounds,
    succeeded,
    suppressed_since,
    withheld,
)
from mailstream.kafka.backfill import PAUSED_WITHIN, QUIET_SECONDS, Intake
from mailstream.kafka.direct_reader import DirectReader
from mailstream.kafka.embedded_quirks import fetch_max_wait
from mailstream.kafka.partitioning import misplaced, partition_count
from mailstream.observability import metrics
from mailstream.providers.base import Accepted, SendFailure
from mailstream.runtime.components import (
    automation_for,
    cluster,
    delivery_runtime,
    suppression_list,
    tenancy,
)
from mailstream.state.staged_flush import (
    AFTER_STATE,
    BEFORE_STATE,
    HANDOFF,
    STATE,
    STATE_LOCK,
    Outbox,
    flush,
)
from mailstream.suppression.entries import Suppression
from mailstream.workflows.apply_effects import dead_letter_headers, dead_letter_message
from mailstream.workflows.health_labels import known_workflow
from tables.deliveries import deliveries, delivery_queue, sent_key, sent_on
from tables.users import users

logger = logging.getLogger(__name__)

SEND_TOPICS = (config.topics.sends_transactional, config.topics.sends_marketing)
# Read directly (mailstream.kafka.direct_reader), Faust only keeps the partitions assigned: without
# acks, its monitor does not take the paused stream for a stuck one.
sends_topic = app.topic(
    *SEND_TOPICS,
    key_serializer="raw",
    value_serializer="raw",
    acks=not config.delivery.direct_read,
)
# The agent (or the reader) and the tail sweep accept commands, one batch at a time.
intake = Intake(deliveries, SEND_TOPICS, config.bootstrap_servers)
REQUIRED = ("send_id", "tenant_id", "user_id", "to", "category", "subject", "text", "html")
TICK_SECONDS = 0.02
# How long a batch of send commands waits to fill before it is queued: in light traffic
# every send waits this long, so it is short. (The dispatcher is woken when it ends.)
ACCEPT_WITHIN = 0.01
# How long the direct reader waits for a fetch before it looks at its partitions again.
READ_WITHIN = 0.2
# How long accepted commands wait for a dispatcher round to take them into its flush
# before they are flushed on their own (the dispatcher is between rounds for longer only
# when it is not running them: not settled, or backing off after an error).
SUBMIT_WAIT = 0.5
PRIORITIES = ("high", "normal", "low")
MARKETING_CLASS = 1  # the index of the marketing ranks in mailstream.delivery.fair_share.CLASSES


def _now_ms() -> int:
    return int(time.time() * 1000)


def _count_for_workflow(command: Any, result: str, event_to_send_s: float | None = None) -> None:
    """The outcome of a send, for its workflow's health (mailstream.workflows.health)."""
    if not isinstance(command, dict):
        return
    tenant = command.get("tenant_id")
    workflows = automation_for(tenant if isinstance(tenant, str) else "").engine.workflows
    workflow = known_workflow(command.get("workflow"), workflows)
    if workflow is None:
        return
    metrics.labelled(metrics.WORKFLOW_SENDS, workflow, result).inc()
    if event_to_send_s is not None:
        metrics.labelled(metrics.WORKFLOW_EVENT_TO_SEND, workflow).observe(event_to_send_s)


def _observe_path(stage: str, event_ats: Iterable[Any], now: float | None = None) -> None:
    """How long after their triggering events sends reached ``stage`` (at ``now``, in
    seconds; default: now). Sends made right away carry the event's time; others none."""
    now = time.time() if now is None else now
    for event_at in event_ats:
        if isinstance(event_at, int):
            metrics.labelled(metrics.SEND_PATH, stage).observe(max(0.0, now - event_at / 1000))


def _what(queue_key: bytes, partition: int) -> str:
    """A queued send for a log line, even from a key that does not decode."""
    try:
        send_id = QueueKey.decode(queue_key).send_id
    except Exception:
        send_id = repr(queue_key)
    return f"queued send {send_id} on partition {partition}"


def _day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


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
    if command.get("priority", "normal") not in PRIORITIES:
        return f"priority must be one of {', '.join(PRIORITIES)}"
    if not valid_tenant(command["tenant_id"]):
        return "tenant_id must be 1 to 64 letters, digits or _ . -"
    return command


async def accept_batch(messages: list[RawMessage]) -> None:
    """Record each new send command as queued; a send id seen before is a duplicate."""
    now = _now_ms()
    outbox = Outbox()
    batch: dict[tuple[int, bytes], Delivery] = {}
    # the triggering events' times of the commands taken, and of those queued
    taken_at: list[Any] = []
    queued_at: list[Any] = []
    for topic in SEND_TOPICS:
        fresh = await intake.fresh(messages, topic)
        partitions = await partition_count(app.producer, topic) if fresh else None
        for m in fresh:
            # Only what a worker of this deployment wrote, where it wrote it: anyone else
            # with access to the broker could otherwise have any text mailed to any
            # address, or a command sent again from another partition.
            wrong = misplaced(m.key, m.partition, partitions)
            if wrong is not None:
                dead_letter_message(outbox, config.topics.dlq, m, "misplaced_command", wrong)
                metrics.DEAD_LETTERS.labels("misplaced_command").inc()
                continue
            signed = verified_send_command(cluster, m.key, m.value)
            if isinstance(signed, str):
                dead_letter_message(outbox, config.topics.dlq, m, "untrusted_command", signed)
                metrics.DEAD_LETTERS.labels("untrusted_command").inc()
                logger.warning(
                    "send command on %s[%d] at offset %d dead-lettered: %s",
                    m.topic,
                    m.partition,
                    m.offset,
                    signed,
                )
                continue
            command = _decode_command(signed)
            if isinstance(command, str):
                dead_letter_message(outbox, config.topics.dlq, m, "bad_send_command", command)
                metrics.DEAD_LETTERS.labels("bad_send_command").inc()
                continue
            taken_at.append(command.get("event_at"))
            tenant = command["tenant_id"]
            if not tenancy.known(tenant):
                reason = f"tenant_id {tenant!r} is not configured under tenants:"
                dead_letter_message(outbox, config.topics.dlq, m, "unknown_tenant", reason)
                metrics.DEAD_LETTERS.labels("unknown_tenant").inc()
                continue
            record_key = delivery_key(tenant, command["send_id"])
            slot = (m.partition, record_key)
            existing = batch.get(slot)
            if existing is None:
                raw = deliveries.get(m.partition, record_key)
                existing = Delivery.decode(raw) if raw is not None else None
            delivery = accept(existing, command, now, tenancy.lane(tenant))
            label = tenancy.label(tenant)
            if delivery is None:
                metrics.labelled(
                    metrics.DELIVERIES, command["category"], "deduplicated", label
                ).inc()
                continue
            assert delivery.queue_key is not None
            batch[slot] = delivery
            # The queued command first: a record without it would make a replay skip it.
            outbox.put(delivery_queue, m.partition, delivery.queue_key, m.value, BEFORE_STATE)
            outbox.put(deliveries, m.partition, record_key, delivery.encode())
            metrics.labelled(metrics.DELIVERIES, command["category"], "queued", label).inc()
            queued_at.append(command.get("event_at"))
        intake.put_progress(outbox, fresh, topic)
    _observe_path("taken", taken_at, now / 1000)
    if outbox:
        # Durable with the dispatcher's next round, which may choose these sends in the
        # same flush; on their own when no round takes them.
        if dispatcher is None or not await dispatcher.submit(outbox):
            await flush(app.producer, outbox)
            if dispatcher is not None:
                dispatcher.wake()
        _observe_path("queued", queued_at)


@app.agent(sends_topic, name="mailstream.delivery")
async def accept_sends(stream: Any) -> None:
    """Acknowledge send commands only once they are durably queued."""
    within = PAUSED_WITHIN if config.delivery.direct_read else ACCEPT_WITHIN
    await intake.consume(stream, accept_batch, within=within)


def pause_faust_fetching(partitions: list[int]) -> None:
    """Faust keeps the send topics' partitions assigned; the direct reader reads them."""
    app.consumer.pause_partitions({TP(topic, p) for topic in SEND_TOPICS for p in partitions})


if config.delivery.direct_read:
    # The commands this worker writes are handed over (HANDOFF below) and wake the
    # reader at once; its fetch brings only the others, so it need not poll often.
    reader = DirectReader(
        config.bootstrap_servers,
        SEND_TOPICS,
        500,
        READ_WITHIN,
        fetch_max_wait(config, send_path=False),
    )

    @app.task
    async def read_sends() -> None:
        await reader.run(
            deliveries.active_partitions,
            lambda topic, partition: intake.progress(topic)(partition),
            settled,
            accept_batch,
            intake.lock,
            pause_faust_fetching,
        )

    @app.on_partitions_revoked.connect
    async def _stop_reading(*_: Any, **__: Any) -> None:
        # Under the lock: a batch being accepted finishes before the partitions move.
        async with intake.lock:
            reader.invalidate()

    @app.on_partitions_assigned.connect
    async def _read_again(*_: Any, **__: Any) -> None:
        reader.invalidate()

    close_when_stopping(reader)

    def _take_written(written: list[tuple[str, int, int, bytes | None, bytes]]) -> None:
        reader.offer(RawMessage(*w) for w in written)

    for _topic in SEND_TOPICS:  # the commands this worker writes, straight to the reader
        HANDOFF[_topic] = _take_written


@app.timer(interval=QUIET_SECONDS)
async def sweep_skipped_send_tails() -> None:
    """Send commands the consumer skipped at the end of a quiet partition: a skipped
    receipt would otherwise wait for the next command on its partition. The direct
    reader skips nothing."""
    if settled() and not config.delivery.direct_read:
        await intake.sweep(accept_batch)


Result = tuple[int, bytes, Delivery, bytes, dict[str, Any], Accepted | SendFailure, float]
# a hard bounce to record on the user: (suspect, partition, command, failure, now)
Suppressed = tuple[Suspect, int, dict[str, Any], SendFailure, int]


class Dispatcher(GuardedLoop):
    """Takes queued sends as the pacer allows and calls the provider for each. A round
    that raises is retried after a backoff; a send that keeps making rounds raise is
    dead-lettered (mailstream.delivery.guarded_loop)."""

    def __init__(self) -> None:
        super().__init__("delivery", TICK_SECONDS, settled)
        self.rt = delivery_runtime()
        self.inflight: set[bytes] = set()  # delivery keys
        self.results: asyncio.Queue[Result] = asyncio.Queue()
        # Finished calls taken from ``results`` whose outcome is not yet durable: kept
        # until a settle flush succeeds, so a failed round loses none of them.
        self.settling: list[Result] = []
        self.tasks: set[asyncio.Task[None]] = set()
        # accepted commands' outboxes for the next round to flush with its own, each with
        # what it is told: True once durable, False if the round failed
        self.submitted: list[tuple[Outbox, asyncio.Future[bool]]] = []

    async def submit(self, accepted: Outbox) -> bool:
        """Have the next round make ``accepted`` durable in its own flush, where the sends
        it queues may already be chosen: one flush where there were two, one after the
        other. True once it is durable; False if no round took it within SUBMIT_WAIT or
        the round failed, and the caller is to flush it itself."""
        entry = (accepted, asyncio.get_running_loop().create_future())
        self.submitted.append(entry)
        self.wake()
        try:
            return await asyncio.wait_for(asyncio.shield(entry[1]), SUBMIT_WAIT)
        except TimeoutError:
            if entry in self.submitted:  # not taken: withdrawn
                self.submitted.remove(entry)
                return False
            return await entry[1]  # taken by a round still flushing

    async def run(self) -> None:
        for provider in self.rt.all_providers():
            await provider.start()
        try:
            await self.loop()
        finally:
            for task in self.tasks:
                task.cancel()
            for provider in self.rt.all_providers():
                await provider.close()

    async def run_round(self) -> None:
        """Queue the accepted commands submitted, record the finished calls and take the
        sends that may go now, in one flush."""
        taken, self.submitted = self.submitted, []
        try:
            await self._round(taken)
        except BaseException:
            for _, told in taken:
                if not told.done():
                    told.set_result(False)  # their submitters flush them themselves
            raise
        for _, told in taken:
            if not told.done():
                told.set_result(True)

    async def _round(self, taken: list[tuple[Outbox, asyncio.Future[bool]]]) -> None:
        outbox = Outbox()
        for accepted, _ in taken:
            outbox.merge(accepted)
        finished, suppress = self.settle(outbox)
        chosen = self.dispatch(
            outbox, room=self.rt.concurrency - len(self.inflight) + len(finished)
        )
        # A marketing call waits for its `attempting` record: a worker that dies during
        # the call must leave it `unknown`, never sent twice. It starts as soon as that
        # record's stage is acknowledged, not after the queue deletions that follow:
        # the pacer counted it when it was chosen, and a wait of varying length
        # between the two would bunch calls up at the provider. A transactional call
        # is sent again after such a death whether that record was written or not
        # (still `queued`), so it starts now. Outcomes are recorded by a later round,
        # after this flush.
        self._start_calls([c for c in chosen if c[2].category == "transactional"])
        marketing = [c for c in chosen if c[2].category != "transactional"]

        def staged(stage: int) -> None:
            if stage == STATE:
                self._start_calls(marketing)
                marketing.clear()

        if taken:
            # The progress records of accepted commands go after every write of theirs,
            # some of which (`attempting`, for a send chosen at once) were put after them.
            outbox.move_to_end(deliveries, intake.keys.values())
        if suppress:
            async with STATE_LOCK:  # user records are the ingest agent's too
                for suspect, p, command, failure, now in suppress:
                    self.suspect = suspect
                    self._suppress(outbox, p, command, failure, now)
                self.suspect = None
                await flush(app.producer, outbox, staged)
        elif outbox:
            await flush(app.producer, outbox, staged)
        del self.settling[: len(finished)]
        for _, _, delivery, _, command, _, _ in finished:
            self.inflight.discard(delivery_key(delivery.tenant_id, command["send_id"]))

    def dispatch(
        self, outbox: Outbox, room: int
    ) -> list[tuple[int, bytes, Delivery, bytes, dict[str, Any]]]:
        """Choose the sends that may go now, up to ``room``: transactional before
        marketing, the tenants with ready sends taking turns within each
        (mailstream.delivery.fair_share). Their `attempting` records (and the sent-today
        counts) go in ``outbox``."""
        if room <= 0:
            return []
        partitions = delivery_queue.active_partitions()
        if not partitions:
            return []
        mono = time.monotonic()
        fair = self.rt.fair
        fair.resize(len(partitions), config.topics.partitions, mono)
        now = _now_ms()
        day = datetime.fromtimestamp(now / 1000, tz=UTC).date()
        iso = day.isoformat()
        counts = {p: sent_on(p, iso) for p in partitions}
        sent_today = sum(counts.values())
        lanes = tenancy.names
        lane_counts = {(lane, p): sent_on(p, iso, lane) for lane in lanes for p in partitions}
        lane_today = {lane: sum(lane_counts[(lane, p)] for p in partitions) for lane in lanes}
        tomorrow = _day_start_ms(day + timedelta(days=1))
        chosen: list[tuple[int, bytes, Delivery, bytes, dict[str, Any]]] = []

        def queue(lane: str, ranks: tuple[int, ...]) -> Iterator[tuple[int, bytes]]:
            for r in ranks:
                for p in partitions:
                    start, end = rank_bounds(r, now, lane)
                    # the store as this round's flush will leave it: with the commands
                    # submitted to this round, which may go in it
                    for key in outbox.keys_between(delivery_queue, p, start, end, room + 50):
                        yield p, key

        for klass, ranks in enumerate(CLASSES):

            def offer(lane: str, item: tuple[int, bytes], klass: int = klass) -> str:
                p, key = item
                # the send in hand, should considering it raise (mailstream.delivery.guarded_loop)
                self.suspect = Suspect((p, key), _what(key, p), (p, key, None))
                quota = tenancy.quotas[lane]
                held = klass == MARKETING_CLASS and over_daily_quota(
                    quota, fair.fraction, lane_today[lane]
                )
                verdict = self._consider(
                    p,
                    key,
                    lane,
                    now,
                    mono,
                    day,
                    sent_today + len(chosen),
                    outbox,
                    hold_until=(tomorrow if quota.over_daily_quota == "defer" else 0)
                    if held
                    else None,
                )
                self.suspect = None
                if not isinstance(verdict, tuple):
                    return verdict
                chosen.append(verdict)
                lane_today[lane] += 1
                return STOP if len(chosen) >= room else CHOSEN

            if not fair.serve(klass, {lane: queue(lane, ranks) for lane in lanes}, offer):
                break
        self.suspect = None  # what fails from here on is no one send's doing
        for p in {c[0] for c in chosen}:
            n = sum(1 for c in chosen if c[0] == p)
            outbox.put(deliveries, p, sent_key(iso), str(counts[p] + n).encode())
        for lane, p in {(tenancy.lane(c[2].tenant_id), c[0]) for c in chosen}:
            n = sum(1 for c in chosen if c[0] == p and tenancy.lane(c[2].tenant_id) == lane)
            outbox.put(deliveries, p, sent_key(iso, lane), str(lane_counts[(lane, p)] + n).encode())
        return chosen

    def _start_calls(
        self, chosen: list[tuple[int, bytes, Delivery, bytes, dict[str, Any]]]
    ) -> None:
        _observe_path("calling", (c[4].get("event_at") for c in chosen if c[2].attempts == 1))
        for p, key, delivery, raw, command in chosen:
            self.inflight.add(delivery_key(delivery.tenant_id, command["send_id"]))
            task = asyncio.create_task(self._call(p, key, delivery, raw, command))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _consider(
        self,
        p: int,
        key: bytes,
        lane: str,
        now: int,
        mono: float,
        day: date,
        sent_today: int,
        outbox: Outbox,
        hold_until: int | None = None,
    ) -> tuple[int, bytes, Delivery, bytes, dict[str, Any]] | str:
        """A queued send: chosen (with its command), or what the fair scheduler is to do
        next (SKIP this one, LANE_DONE for its tenant, STOP for everyone).

        ``hold_until``: the tenant is over its sends per day; the send is not taken but
        postponed to then, or dropped when 0.
        """
        qk = QueueKey.decode(key)
        if qk.record_key in self.inflight:
            return SKIP
        record = outbox.get(deliveries, p, qk.record_key)
        delivery = Delivery.decode(record) if record is not None else None
        if delivery is None or delivery.queue_key != key or delivery.state in FINAL:
            outbox.put(delivery_queue, p, key, None, AFTER_STATE)  # left by a crash
            return SKIP
        label = tenancy.label(delivery.tenant_id)
        if delivery.state == ATTEMPTING:
            # Attempting, but not by this process: its worker died during the call.
            requeued = orphaned(delivery, now)
            outbox.put(deliveries, p, qk.record_key, delivery.encode())
            if not requeued:
                # Listed on the dead-letter topic, so an operator can check with the provider.
                outbox.put(delivery_queue, p, key, None, AFTER_STATE)
                reason = (
                    "the worker stopped while the provider was called; marketing is not sent"
                    " twice, so whether it was delivered is unknown"
                )
                headers = dead_letter_headers("unknown_outcome", reason, "delivery", p, -1)
                value = outbox.get(delivery_queue, p, key) or b""
                outbox.send(config.topics.dlq, delivery.user_id.encode(), value, headers)
                metrics.DEAD_LETTERS.labels("unknown_outcome").inc()
                _count_for_workflow(orjson.loads(value) if value else None, "unknown")
                logger.warning("send %s: %s", qk.send_id, reason)
            metrics.DELIVERIES.labels(
                delivery.category, "requeued" if requeued else "unknown", label
            ).inc()
            return SKIP
        raw = outbox.get(delivery_queue, p, key)
        if raw is None:
            return SKIP
        if hold_until is not None:
            self._hold(p, key, qk, delivery, raw, hold_until, now, outbox)
            return SKIP
        command = orjson.loads(raw)
        admission = self.rt.fair.admit(lane, recipient_domain(command["to"]), mono, day, sent_today)
        if admission.verdict == DOMAIN_WAIT:
            return SKIP
        if admission.verdict == TENANT_WAIT:
            metrics.PACER_WAITS.labels(TENANT_WAIT).inc()
            return LANE_DONE
        if admission.verdict != GO:
            metrics.PACER_WAITS.labels(admission.verdict).inc()
            return STOP
        # Checked last, just before the call: a send waiting its turn is considered in
        # every round, and reading the user's record each time would cost more than
        # the send. A send withheld here has taken its token, as a send would have.
        try:
            listed = suppression_list.get(command["to"])
        except RuntimeError:  # the list is not open (yet): the send waits for it
            return SKIP
        why = suppressed_since(delivery.category, self._own_suppressions(p, delivery), listed)
        if why is not None:
            withheld(delivery, why, now)
            outbox.put(delivery_queue, p, key, None, AFTER_STATE)
            outbox.put(deliveries, p, qk.record_key, delivery.encode())
            metrics.DELIVERIES.labels(delivery.category, "suppressed", label).inc()
            _count_for_workflow(command, "suppressed")
            logger.info("send %s not sent: %s", qk.send_id, why)
            return SKIP
        attempt(delivery, now)
        outbox.put(deliveries, p, qk.record_key, delivery.encode())
        return p, key, delivery, raw, command

    @staticmethod
    def _own_suppressions(p: int, delivery: Delivery) -> list[Suppression]:
        """The recipient's own suppressions, from their user record: sends are keyed by
        user id, so the record is in the same partition of the users table."""
        stored = users.get(p, user_key(delivery.tenant_id, delivery.user_id))
        return list(UserState.decode(stored).suppressions.values()) if stored else []

    def _hold(
        self,
        p: int,
        key: bytes,
        qk: QueueKey,
        delivery: Delivery,
        raw: bytes,
        until: int,
        now: int,
        outbox: Outbox,
    ) -> None:
        """A marketing send over its tenant's sends per day: to the next UTC day, or
        dropped (``until`` 0)."""
        label = tenancy.label(delivery.tenant_id)
        if until:
            postponed(delivery, until, now)
            assert delivery.queue_key is not None
            outbox.put(delivery_queue, p, delivery.queue_key, raw, BEFORE_STATE)
            result, action = "quota_deferred", "deferred"
        else:
            dropped(delivery, now)
            result, action = "quota_dropped", "dropped"
        outbox.put(delivery_queue, p, key, None, AFTER_STATE)
        outbox.put(deliveries, p, qk.record_key, delivery.encode())
        metrics.DELIVERIES.labels(delivery.category, result, label).inc()
        metrics.TENANT_QUOTA.labels(label, "sends_per_day", action).inc()

    async def _call(
        self, p: int, key: bytes, delivery: Delivery, raw: bytes, command: dict[str, Any]
    ) -> None:
        while (wait := self.rt.fair.pacer.start(time.monotonic())) > 0:
            await asyncio.sleep(wait)
        started = time.perf_counter()
        outcome: Accepted | SendFailure
        tenant = delivery.tenant_id
        provider = self.rt.provider_for(tenant)
        try:
            message = compose(command, self.rt.sender_for(tenant), self.rt.tokens)
            outcome = await provider.send(message)
        except SendFailure as failure:
            outcome = failure
        except Exception as exc:  # a provider bug must not lose the send
            logger.exception("provider %s failed unexpectedly", provider.name)
            outcome = SendFailure("error", repr(exc), retryable=True)
        await self.results.put((p, key, delivery, raw, command, outcome, started))

    def settle(self, outbox: Outbox) -> tuple[list[Result], list[Suppressed]]:
        """The outcomes of finished calls, in ``outbox``: returns the calls settled (taken
        from ``settling`` once the outbox is durable) and the addresses to suppress."""
        while not self.results.empty():
            self.settling.append(self.results.get_nowait())
        finished = list(self.settling)
        now = _now_ms()
        suppress: list[Suppressed] = []
        for item in finished:
            p, key, delivery, raw, command, outcome, started = item
            what = f"finished send {command['send_id']} on partition {p}"
            suspect = self.suspect = Suspect((p, key), what, (p, key, item))
            delivery = delivery.copy()  # a failed round leaves the result as it came
            record_key = delivery_key(delivery.tenant_id, command["send_id"])
            category = delivery.category
            provider = self.rt.provider_for(delivery.tenant_id).name
            label = tenancy.label(delivery.tenant_id)
            metrics.labelled(metrics.PROVIDER_SECONDS, provider).observe(
                time.perf_counter() - started
            )
            if isinstance(outcome, Accepted):
                succeeded(delivery, outcome, now)
                event_at = command.get("event_at")
                waited = None
                if isinstance(event_at, int) and delivery.attempts == 1:
                    waited = max(0, now - event_at) / 1000
                    metrics.EVENT_TO_SEND.observe(waited)
                outbox.put(delivery_queue, p, key, None, AFTER_STATE)
                metrics.labelled(metrics.SENDS, provider, category, "sent", label).inc()
                _count_for_workflow(command, "sent", waited)
            else:
                result = failed(delivery, outcome, self.rt.retry, now, random.random())
                if result.retry_at is not None:
                    assert delivery.queue_key is not None
                    outbox.put(delivery_queue, p, delivery.queue_key, raw, BEFORE_STATE)
                    outbox.put(delivery_queue, p, key, None, AFTER_STATE)
                    metrics.SENDS.labels(provider, category, "retry", label).inc()
                    _count_for_workflow(command, "retry")
                else:
                    outbox.put(delivery_queue, p, key, None, AFTER_STATE)
                    self._dead_letter(outbox, p, raw, command, delivery, outcome, result.reason)
                    metrics.SENDS.labels(provider, category, result.reason, label).inc()
                    _count_for_workflow(command, result.reason)
                    if result.suppress:
                        suppress.append((suspect, p, command, outcome, now))
            outbox.put(deliveries, p, record_key, delivery.encode())
        self.suspect = None
        return finished, suppress

    async def give_up(self, suspect: Suspect, reason: str) -> None:
        """A send the dispatcher keeps failing on: dead-lettered, off the queue, its record
        final, so it is neither lost silently nor attempted again."""
        p, key, result = suspect.item
        now = _now_ms()
        raw = result[3] if result is not None else delivery_queue.get(p, key)
        if result is not None:
            outcome = result[5]
            reason += (
                f"; the provider had accepted it as {outcome.provider_message_id}"
                if isinstance(outcome, Accepted)
                else f"; the provider had answered {outcome.code}: {outcome.message}"
            )
        record_key = QueueKey.decode(key).record_key
        outbox = Outbox()
        delivery = dead_letter_queued(
            outbox,
            deliveries,
            delivery_queue,
            p,
            key,
            record_key,
            command=raw,
            reason=reason,
            source="delivery",
            dlq_topic=config.topics.dlq,
            now=now,
        )
        await flush(app.producer, outbox)
        metrics.DEAD_LETTERS.labels("dispatcher_error").inc()
        if delivery is not None:
            label = tenancy.label(delivery.tenant_id)
            metrics.DELIVERIES.labels(delivery.category, "dead_lettered", label).inc()
        if result is not None:
            self.settling.remove(result)
            self.inflight.discard(record_key)

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
        text = f"{self.rt.provider_for(delivery.tenant_id).name} {failure.code}: {failure.message}"
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
        provider = self.rt.provider_for(command["tenant_id"]).name
        source = f"delivery:{provider}:{failure.code}"
        user.suppressions["hard_bounce"] = Suppression("hard_bounce", source, now)
        outbox.put(users, p, key, user.encode())
        metrics.SUPPRESSED.labels("hard_bounce").inc()


dispatcher: Dispatcher | None = None


@app.task
async def run_dispatcher() -> None:
    global dispatcher
    dispatcher = Dispatcher()
    try:
        await dispatcher.run()
    finally:
        await intake.close()
