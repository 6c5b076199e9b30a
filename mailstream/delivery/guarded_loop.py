"""A dispatcher loop that survives its own errors: each round runs under a guard that
logs, counts, backs off and, for a command that keeps failing, gives it up
(mailstream.delivery.round_guard decides)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from mailstream.delivery.round_guard import ErrorPolicy, ErrorTracker
from mailstream.delivery.state_machine import Delivery, dead_lettered
from mailstream.exceptions import Fenced
from mailstream.observability import metrics
from mailstream.state.rocksdb_store import PartitionStore
from mailstream.state.staged_flush import AFTER_STATE, Outbox
from mailstream.workflows.apply_effects import dead_letter_headers

logger = logging.getLogger(__name__)

REASON_MAX_CHARS = 500  # an exception's text on the dead-letter topic, at most


@dataclass(frozen=True, slots=True)
class Suspect:
    """The command a round was handling: ``key`` names it across rounds, ``label`` says
    which it is in a log line (ids, never addresses), ``item`` is what giving it up needs."""

    key: Hashable
    label: str
    item: Any


class GuardedLoop:
    """Runs ``run_round`` every ``tick_s`` while ``ready()``; an error in a round is
    logged with what was in hand, counted in ``mailstream_dispatcher_errors_total``, and
    followed by a capped backoff. Subclasses set ``self.suspect`` while they handle one
    command and implement ``give_up``."""

    def __init__(
        self,
        name: str,
        tick_s: float,
        ready: Callable[[], bool],
        policy: ErrorPolicy | None = None,
    ) -> None:
        self.name = name
        self.tick_s = tick_s
        self.ready = ready
        self.errors = ErrorTracker(policy or ErrorPolicy())
        self.suspect: Suspect | None = None
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Run the next round now rather than at the next tick (new work is queued)."""
        self._woken.set()

    async def run_round(self) -> None:
        raise NotImplementedError

    async def give_up(self, suspect: Suspect, reason: str) -> None:
        """Dead-letter ``suspect`` with ``reason`` and take it off the queue, durably."""
        raise NotImplementedError

    async def loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._woken.wait(), self.tick_s)
            except TimeoutError:
                pass
            self._woken.clear()
            if not self.ready():
                continue
            self.suspect = None
            try:
                await self.run_round()
            except Exception as exc:
                await self.after_error(exc)
            else:
                self.errors.succeeded()

    async def after_error(self, exc: Exception) -> None:
        suspect, self.suspect = self.suspect, None
        if isinstance(exc, Fenced):
            # A partition moved to another worker (exactly_once): no command's fault, and
            # what the round had of it is its new owner's to settle.
            logger.info("%s dispatcher: a round left to a new owner: %s", self.name, exc)
            await asyncio.sleep(self.tick_s)
            return
        decision = self.errors.failed(suspect.key if suspect is not None else None)
        metrics.DISPATCHER_ERRORS.labels(self.name).inc()
        where = suspect.label if suspect is not None else "no command in hand"
        summary = f"{type(exc).__name__}: {exc}"[:REASON_MAX_CHARS]
        if decision.in_a_row == 1 or decision.strikes == 1:
            # The traceback once per spell of errors (or per new suspect), not per retry.
            logger.error(
                "%s dispatcher: a round failed (%s); retrying in %.1fs",
                self.name,
                where,
                decision.backoff_s,
                exc_info=exc,
            )
        else:
            logger.warning(
                "%s dispatcher: a round failed again (%s, %d in a row, %d on this command):"
                " %s; retrying in %.1fs",
                self.name,
                where,
                decision.in_a_row,
                decision.strikes,
                summary,
                decision.backoff_s,
            )
        if decision.give_up and suspect is not None:
            reason = f"the {self.name} dispatcher failed {decision.strikes} times on it: {summary}"
            try:
                await self.give_up(suspect, reason)
            except Exception:
                # It keeps its strikes: the next round that fails on it tries again.
                logger.exception("%s dispatcher: could not dead-letter %s", self.name, where)
            else:
                self.errors.forget(suspect.key)
                logger.error("%s dispatcher: dead-lettered %s: %s", self.name, where, reason)
        await asyncio.sleep(decision.backoff_s)


def dead_letter_queued(
    outbox: Outbox,
    records: PartitionStore,
    queue: PartitionStore,
    partition: int,
    queue_key: bytes,
    record_key: bytes,
    command: bytes | None,
    reason: str,
    source: str,
    dlq_topic: str,
    now: int,
) -> Delivery | None:
    """A queued send or webhook call given up: its record (if readable) final as
    ``dead_lettered``, its queue entry deleted, and the command on the dead-letter topic
    with reason code ``dispatcher_error`` (``source``: the dispatcher). Returns the record,
    if there was one; the caller flushes ``outbox``."""
    stored = records.get(partition, record_key)
    record: Delivery | None = None
    if stored is not None:
        try:
            record = Delivery.decode(stored)
        except Exception:  # an unreadable record is left as it is; the queue moves on
            logger.exception(
                "%s record %r on partition %d is unreadable", records.name, record_key, partition
            )
    if record is not None:
        dead_lettered(record, now, reason)
        outbox.put(records, partition, record_key, record.encode())
    outbox.put(queue, partition, queue_key, None, AFTER_STATE)
    headers = dead_letter_headers("dispatcher_error", reason, source, partition, -1)
    user = record.user_id if record is not None else ""
    outbox.send(dlq_topic, user.encode(), command or b"", headers)
    return record
