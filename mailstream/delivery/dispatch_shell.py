"""What both dispatchers (email delivery, webhook calls) share around the pure
decisions: the writes each decision makes to their record and queue tables, and the
calls in flight, finished and not yet recorded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, Generic, Protocol, TypeVar

import orjson

from mailstream.delivery.dispatch_plan import IN_FLIGHT, STALE, DeadLetterNote, Entry, triage
from mailstream.delivery.guarded_loop import GuardedLoop, dead_letter_queued
from mailstream.delivery.settlement import Settlement
from mailstream.delivery.state_machine import Delivery
from mailstream.observability import metrics
from mailstream.state.staged_flush import AFTER_STATE, BEFORE_STATE, Outbox, flush
from mailstream.workflows.apply_effects import dead_letter_headers

logger = logging.getLogger(__name__)


class Flush(Protocol):
    """The one effect of a round: make ``outbox`` durable (mailstream.state.staged_flush),
    calling ``staged(stage)`` as each stage is acknowledged."""

    def __call__(
        self, outbox: Outbox, staged: Callable[[int], None] | None = None
    ) -> Awaitable[None]: ...


def flush_with(producer: Callable[[], Any]) -> Flush:
    """The flush effect through the producer ``producer()`` returns when it is called
    (Faust's is made when the worker starts)."""

    async def flush_outbox(outbox: Outbox, staged: Callable[[int], None] | None = None) -> None:
        await flush(producer(), outbox, staged)

    return flush_outbox


class QueueTables:
    """A dispatcher's record table (one record per send or call), its queue (the command
    by queue key) and the dead-letter topic, with ``source`` naming the dispatcher there."""

    def __init__(self, records: Any, queue: Any, dlq_topic: str, source: str) -> None:
        self.records = records
        self.queue = queue
        self.dlq_topic = dlq_topic
        self.source = source

    def entry(
        self, outbox: Outbox, p: int, key: bytes, record_key: bytes, in_flight: bool
    ) -> Entry | None:
        """The queue entry under ``key`` as this round sees it (with what ``outbox``
        already changed), or None when there is nothing to do with it: its call is in
        flight, or it is stale (left by a crash), and then it is dropped."""
        records, queue = outbox.get(self.records, p, record_key), outbox.get(self.queue, p, key)
        entry = triage(key, records, queue, in_flight)
        if entry.verdict == STALE:
            self.drop(outbox, p, key)
        return None if entry.verdict in (IN_FLIGHT, STALE) else entry

    def drop(self, outbox: Outbox, p: int, key: bytes) -> None:
        """Off the queue, once the record's new state is durable."""
        outbox.put(self.queue, p, key, None, AFTER_STATE)

    def write(self, outbox: Outbox, p: int, record_key: bytes, record: Delivery) -> None:
        outbox.put(self.records, p, record_key, record.encode())

    def requeue(self, outbox: Outbox, p: int, key: bytes, new_key: bytes, raw: bytes) -> None:
        """The command queued under ``new_key`` before its record says so, the old entry
        deleted after: a crash in between leaves a stale entry, never a lost command."""
        outbox.put(self.queue, p, new_key, raw, BEFORE_STATE)
        outbox.put(self.queue, p, key, None, AFTER_STATE)

    def dead_letter(
        self, outbox: Outbox, p: int, record: Delivery, raw: bytes, note: DeadLetterNote
    ) -> None:
        headers = dead_letter_headers(note.code, note.text, self.source, p, -1)
        if note.attempts:
            headers.append(("mailstream.attempts", orjson.dumps(record.history)))
        outbox.send(self.dlq_topic, record.user_id.encode(), raw, headers)
        metrics.DEAD_LETTERS.labels(note.code).inc()

    def settled(
        self, outbox: Outbox, p: int, key: bytes, record_key: bytes, raw: bytes, s: Settlement
    ) -> None:
        """The writes of a settled call (mailstream.delivery.settlement)."""
        if s.requeue_key is not None:
            self.requeue(outbox, p, key, s.requeue_key, raw)
        else:
            self.drop(outbox, p, key)
            if s.dead_letter is not None:
                self.dead_letter(outbox, p, s.record, raw, s.dead_letter)
        self.write(outbox, p, record_key, s.record)

    def give_up(
        self,
        outbox: Outbox,
        p: int,
        key: bytes,
        record_key: bytes,
        raw: bytes | None,
        reason: str,
        now: int,
    ) -> Delivery | None:
        """A queued command the dispatcher keeps failing on, dead-lettered
        (mailstream.delivery.guarded_loop.dead_letter_queued); ``raw``: None to read it
        from the queue."""
        if raw is None:
            raw = self.queue.get(p, key)
        return dead_letter_queued(
            outbox,
            self.records,
            self.queue,
            p,
            key,
            record_key,
            command=raw,
            reason=reason,
            source=self.source,
            dlq_topic=self.dlq_topic,
            now=now,
        )


F = TypeVar("F")


class CallsInFlight(GuardedLoop, Generic[F]):
    """A guarded dispatcher loop with calls in flight: each call runs as a task and puts
    what it finished with (``F``) on ``results``; ``collect`` moves them to ``settling``,
    where they stay until their outcome is durable, so a failed round loses none."""

    def __init__(self, name: str, tick_s: float, ready: Callable[[], bool]) -> None:
        super().__init__(name, tick_s, ready)
        self.inflight: set[bytes] = set()  # the record keys of the calls in flight
        self.results: asyncio.Queue[F] = asyncio.Queue()
        self.settling: list[F] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def taken_of(self, item: F) -> Any:
        """The queued command a finished call made (with its partition and record key)."""
        raise NotImplementedError

    def collect(self, owned: Collection[int]) -> list[F]:
        """The finished calls to settle in this round: those of the ``owned`` partitions.
        A call whose partition has moved to another worker is forgotten here: its new
        owner decides from the durable records (``attempting``) what becomes of it, and
        a record written here would be a write to a partition this worker lost."""
        while not self.results.empty():
            self.settling.append(self.results.get_nowait())
        kept: list[F] = []
        moved: list[F] = []
        for item in self.settling:
            (kept if self.taken_of(item).partition in owned else moved).append(item)
        if moved:
            self.settling = kept
            for item in moved:
                self.inflight.discard(self.taken_of(item).record_key)
            logger.info(
                "%s dispatcher: %d finished call(s) of partitions that moved are their new"
                " owner's to settle",
                self.name,
                len(moved),
            )
        return list(self.settling)

    def recorded(self, finished: list[F]) -> None:
        """The outcomes of ``finished`` (from ``collect``) are durable."""
        del self.settling[: len(finished)]

    def spawn(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(call)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel_calls(self) -> None:
        for task in self.tasks:
            task.cancel()
