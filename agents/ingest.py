"""The ingest agent: events in; dead letters and send commands out; user state and
workflow enrollments folded in once per batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from faust.types import TP

from mailstream.core.events import Event
from mailstream.core.ingest_batch import (
    DEAD_LETTERED,
    REROUTED,
    BatchResult,
    DeadLetter,
    IngestSettings,
    add_to_ledger,
    ingest_batch,
)
from mailstream.core.isolate import ENGINE_ERROR, Unsettled, describe, isolate
from mailstream.core.tenants import EventRates
from mailstream.core.user_state import UserState
from mailstream.kafka.access import kafka_access
from mailstream.kafka.direct_reader import DirectReader
from mailstream.kafka.embedded_quirks import fetch_max_wait
from mailstream.kafka.intake import Intake
from mailstream.kafka.records import RawMessage
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime
from mailstream.state.staged_flush import STATE_LOCK, Outbox, flush
from mailstream.state.store import PROGRESS_KEY
from mailstream.state.user_cache import StateCache
from mailstream.workflows.apply_effects import dead_letter_message
from mailstream.workflows.engine import Effects

logger = logging.getLogger(__name__)

# Events decided between two turns of the other tasks on the event loop: a whole batch
# in one go would hold up every delivery step for as long.
TURN_EVENTS = 100


class IngestAgent:
    """Decides the events of the partitions this worker owns, batch by batch."""

    def __init__(self, rt: Runtime) -> None:
        config = rt.config
        self.rt = rt
        self.config = config
        self.users = rt.tables.users
        self.settings = IngestSettings(
            max_event_bytes=config.ingest.max_event_bytes,
            default_tenant=config.ingest.default_tenant,
            dedup_window_s=config.ingest.dedup_window,
            dedup_max_ids=config.ingest.dedup_max_ids_per_user,
            sampling={kind: rule.rule() for kind, rule in config.sampling.items()},
            throttling={kind: rule.rule() for kind, rule in config.throttling.items()},
            tenancy=rt.tenancy,
            partitions=config.topics.partitions,
            limits=config.ingest.limits.limits(),
        )
        # The tenants' events-per-second quotas: this worker's share, by its partitions.
        self.event_rates = EventRates(rt.tenancy)
        # The reader changes user records, as the timers do: STATE_LOCK.
        topics = {config.topics.events: PROGRESS_KEY}
        self.intake = Intake(self.users, topics, lock=STATE_LOCK)
        self.reader = DirectReader(
            kafka_access(config),
            [config.topics.events],
            config.ingest.batch_size,
            config.ingest.batch_within,
            fetch_max_wait(config),
        )
        self.user_cache = StateCache(config.ingest.user_cache)

    def batch_loader(self) -> Callable[[int, bytes], UserState | None]:
        """``load_user`` for one batch decided in parts: a user read by an earlier part is
        handed back as that part left it."""
        read: dict[tuple[int, bytes], UserState | None] = {}

        def load(partition: int, key: bytes) -> UserState | None:
            slot = (partition, key)
            if slot not in read:
                read[slot] = self.load_user(partition, key)
            return read[slot]

        return load

    def load_user(self, partition: int, key: bytes) -> UserState | None:
        raw = self.users.get(partition, key)
        return None if raw is None else self.user_cache.load((partition, key), raw)

    def to_outbox(self, result: BatchResult, fresh: list[RawMessage], now: int) -> Outbox:
        """Everything the batch decided, with each partition's progress record last."""
        outbox = Outbox()
        # Messages go out in the first stage, acknowledged before any progress record: a
        # crash before the progress record copies again, and the copy is deduplicated.
        for moved in result.reroutes:  # from the partition read to the key's
            m, to = moved.message, moved.partition
            outbox.send(m.topic, m.key, m.value or b"", list(m.headers), to, m.partition)
        for slot, state in result.changed.items():
            raw = state.encode()
            outbox.put(self.users, slot[0], slot[1], raw)
            self.user_cache.written(slot, raw, state)
        for (partition, key), fx in result.reactions:
            user = result.changed[(partition, key)]
            self.rt.applier_for(user.tenant_id).apply(outbox, partition, key, user, fx, now)
        for dl in result.dead_letters:
            dead_letter_message(outbox, self.config.topics.dlq, dl.message, dl.code, dl.reason)
        # The ledger rides in the progress record: each event is counted once, crash or not.
        ledgers = {
            partition: add_to_ledger(self.users.progress_note(partition), counts)
            for partition, counts in result.by_partition.items()
        }
        outbox.put_progress(self.users, fresh, PROGRESS_KEY, ledgers)
        return outbox

    def count(self, result: BatchResult, consumed: int) -> None:
        metrics.EVENTS_CONSUMED.inc(consumed)
        for (outcome, label, tenant), n in result.counts.items():
            if outcome == DEAD_LETTERED:
                metrics.DEAD_LETTERS.labels(label).inc(n)
                metrics.EVENT_OUTCOMES.labels(outcome, "invalid", tenant).inc(n)
            elif outcome == REROUTED:  # moved unread: its type is counted where it lands
                metrics.EVENT_OUTCOMES.labels(outcome, label, tenant).inc(n)
            else:
                metrics.EVENT_OUTCOMES.labels(outcome, metrics.event_type_label(label), tenant).inc(
                    n
                )
        for tenant, n in result.tenant_throttled.items():
            metrics.TENANT_QUOTA.labels(tenant, "events_per_second", "throttled").inc(n)

    async def process(self, messages: list[RawMessage]) -> None:
        """Decide a batch and make its effects durable. Call with STATE_LOCK held.

        Events that make deciding or flushing fail are found by splitting the batch
        (mailstream.core.isolate) and dead-lettered; the others are applied as usual."""
        # No send is decided before the global suppression list has been read once.
        await self.rt.suppression_list.ready.wait()
        started = time.perf_counter()
        fresh = await self.intake.fresh(messages, self.config.topics.events)
        now = int(time.time() * 1000)
        if self.event_rates.buckets:
            owned = len(self.users.active_partitions())
            self.event_rates.resize(owned, self.config.topics.partitions, now / 1000)
        unsettled = Unsettled()

        async def attempt(part: Sequence[RawMessage]) -> None:
            await self.apply(list(part), now, unsettled)

        async def give_up(message: RawMessage, exc: Exception) -> None:
            await self.reject(message, exc, now)

        await isolate(fresh, attempt, give_up)
        if unsettled:
            await flush(self.rt.writer, unsettled.as_stored())
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def apply(self, fresh: list[RawMessage], now: int, unsettled: Unsettled) -> None:
        """Decide ``fresh`` and flush what it decided; count it once that is durable."""

        def react(state: UserState, event: Event) -> Effects:
            return self.rt.automation_for(state.tenant_id).on_event(state, event, now)

        result = BatchResult()
        load = self.batch_loader()
        for start in range(0, len(fresh), TURN_EVENTS):
            if start:
                await asyncio.sleep(0)  # deliveries, timers and the web get a turn
            part = fresh[start : start + TURN_EVENTS]
            result = ingest_batch(part, load, now, self.settings, react, self.event_rates, result)
        if fresh:
            outbox = self.to_outbox(result, fresh, now)
            flushing = time.perf_counter()
            try:
                await flush(self.rt.writer, outbox)
            except Exception:
                unsettled.add(outbox)  # some of it may have reached the broker
                raise
            metrics.INGEST_FLUSH_SECONDS.observe(time.perf_counter() - flushing)
            written = time.time()
            for _, fx in result.reactions:
                for send in fx.sends:
                    if send.event_at is not None:
                        metrics.labelled(metrics.SEND_PATH, "written").observe(
                            written - send.event_at / 1000
                        )
        self.count(result, len(fresh))

    async def reject(self, message: RawMessage, exc: Exception, now: int) -> None:
        """An event the worker fails on by itself: dead-lettered with the error, counted."""
        reason = f"processing the event failed: {describe(exc)}"
        logger.warning(
            "event %s[%d]@%d dead-lettered (%s): %s",
            message.topic,
            message.partition,
            message.offset,
            ENGINE_ERROR,
            describe(exc),
        )
        result = BatchResult()
        result.dead_letters.append(DeadLetter(message, ENGINE_ERROR, reason))
        result.count(DEAD_LETTERED, ENGINE_ERROR, message.partition)
        await flush(self.rt.writer, self.to_outbox(result, [message], now))
        self.count(result, 1)

    def pause_faust_fetching(self, partitions: list[int]) -> None:
        """Faust keeps the events partitions assigned; the direct reader reads them."""
        self.rt.app.consumer.pause_partitions(
            {TP(self.config.topics.events, p) for p in partitions}
        )

    async def consume(self, stream: Any) -> None:
        await self.intake.drain(stream, self.config.ingest.batch_size)

    async def read_events(self) -> None:
        users = self.users
        await self.reader.run(
            users.active_partitions,
            lambda _topic, partition: users.progress(partition),
            self.rt.settled,
            self.process,
            STATE_LOCK,
            self.pause_faust_fetching,
            lambda positions: self.intake.advance(positions, self.rt.writer),
        )

    async def stop_reading(self, *_: Any, **__: Any) -> None:
        # Under the lock: a batch being applied finishes before the partitions move.
        async with STATE_LOCK:
            self.reader.invalidate()
            self.user_cache.clear()

    async def read_again(self, *_: Any, **__: Any) -> None:
        self.reader.invalidate()


def register(rt: Runtime) -> None:
    """The Faust wiring: the agent only keeps the events partitions assigned, the reader
    reads."""
    app, ingest = rt.app, IngestAgent(rt)
    app.agent(rt.events_topic, name="mailstream.ingest")(ingest.consume)
    app.task(ingest.read_events)
    app.on_partitions_revoked.connect(ingest.stop_reading)
    app.on_partitions_assigned.connect(ingest.read_again)
    rt.close_when_stopping(ingest.reader)
