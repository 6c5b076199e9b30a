"""The email dispatcher: takes queued sends as the pacer allows (transactional first, the
tenants taking turns), records ``attempting``, calls the provider without blocking
anything else, and records the outcomes, each round in one flush.

The decisions are mailstream.delivery.dispatch_plan's and .settlement's; this reads the
tables, the clock and the random source, and writes and calls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Any

from mailstream.core.tenants import Tenancy
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery.compose import compose
from mailstream.delivery.dispatch_plan import Taken
from mailstream.delivery.dispatch_shell import CallsInFlight, Flush, QueueTables
from mailstream.delivery.guarded_loop import Suspect
from mailstream.delivery.send_chooser import AddressList, SendChooser, SendRuntime, suspect_for
from mailstream.delivery.settlement import SENT, Settlement, first_attempt_wait, settle
from mailstream.delivery.state_machine import QueueKey
from mailstream.observability import metrics
from mailstream.providers.base import Accepted, SendFailure
from mailstream.state.staged_flush import STATE, STATE_LOCK, Outbox
from mailstream.suppression import lifecycle
from mailstream.workflows.health_labels import known_workflow

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.02
# How long accepted commands wait for a dispatcher round to take them into its flush
# before they are flushed on their own (the dispatcher is between rounds for longer only
# when it is not running them: not settled, or backing off after an error).
SUBMIT_WAIT = 0.5


@dataclass(frozen=True, slots=True, eq=False)
class Finished:
    """A send whose provider call ended, with ``outcome``; ``started``: perf_counter."""

    taken: Taken
    outcome: Accepted | SendFailure
    started: float


def count_for_workflow(
    workflows: Container[str], command: Any, result: str, waited_s: float | None = None
) -> None:
    """The outcome of a send, for its workflow's health (mailstream.workflows.health)."""
    if not isinstance(command, dict):
        return
    workflow = known_workflow(command.get("workflow"), workflows)
    if workflow is None:
        return
    metrics.labelled(metrics.WORKFLOW_SENDS, workflow, result).inc()
    if waited_s is not None:
        metrics.labelled(metrics.WORKFLOW_EVENT_TO_SEND, workflow).observe(waited_s)


def observe_path(stage: str, event_ats: Iterable[Any], now: float) -> None:
    """How long after their triggering events sends reached ``stage`` at ``now``
    (seconds). Sends made right away carry the event's time; others none."""
    for event_at in event_ats:
        if isinstance(event_at, int):
            metrics.labelled(metrics.SEND_PATH, stage).observe(max(0.0, now - event_at / 1000))


class SendDispatcher(CallsInFlight[Finished]):
    """Takes queued sends as the pacer allows and calls the provider for each. A round
    that raises is retried after a backoff; a send that keeps making rounds raise is
    dead-lettered (mailstream.delivery.guarded_loop)."""

    def __init__(
        self,
        *,
        tables: QueueTables,
        users: Any,
        runtime: SendRuntime,
        tenancy: Tenancy,
        suppression_list: AddressList,
        workflows: Callable[[str], Container[str]],
        partitions: int,
        flush: Flush,
        ready: Callable[[], bool],
        progress_keys: Iterable[bytes] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__("delivery", TICK_SECONDS, ready)
        self.tables, self.users, self.rt = tables, users, runtime
        self.tenancy, self.workflows, self.flush = tenancy, workflows, flush
        self.chooser = SendChooser(
            tables=tables,
            users=users,
            runtime=runtime,
            tenancy=tenancy,
            suppression_list=suppression_list,
            partitions=partitions,
            count=self._count,
            hand=self._hand,
        )
        self.progress_keys = list(progress_keys)
        self.clock, self.monotonic, self.jitter = clock, monotonic, jitter
        # accepted commands' outboxes for the next round to flush with its own, each with
        # what it is told: True once durable, False if the round failed
        self.submitted: list[tuple[Outbox, asyncio.Future[bool]]] = []

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def submit(self, accepted: Outbox) -> bool:
        """Have the next round make ``accepted`` durable in its own flush, where the sends
        it queues may already be chosen: one flush where there were two. True once it is
        durable; False if no round took it within SUBMIT_WAIT or the round failed, and
        the caller is to flush it itself."""
        entry = (accepted, asyncio.get_running_loop().create_future())
        self.submitted.append(entry)
        self.wake()
        try:
            return await asyncio.wait_for(asyncio.shield(entry[1]), SUBMIT_WAIT)
        except TimeoutError:
            if entry in self.submitted:  # not taken: withdrawn
                self.submitted.remove(entry)
                return False
            return bool(await entry[1])  # taken by a round still flushing

    async def run(self) -> None:
        for provider in self.rt.all_providers():
            await provider.start()
        try:
            await self.loop()
        finally:
            self.cancel_calls()
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
        finished, bounced = self.settle(outbox)
        room = self.rt.concurrency - len(self.inflight) + len(finished)
        chosen = self.chooser.choose(outbox, room, self.inflight, self.now_ms(), self.monotonic())
        # A marketing call waits for its `attempting` record: a worker that dies during
        # the call must leave it `unknown`, never sent twice. It starts as soon as that
        # record's stage is acknowledged, not after the queue deletions that follow:
        # the pacer counted it when it was chosen, and a wait of varying length
        # between the two would bunch calls up at the provider. A transactional call
        # is sent again after such a death whether that record was written or not
        # (still `queued`), so it starts now.
        self._start_calls([t for t in chosen if t.record.category == "transactional"])
        marketing = [t for t in chosen if t.record.category != "transactional"]

        def staged(stage: int) -> None:
            if stage == STATE:
                self._start_calls(marketing)
                marketing.clear()

        if taken:
            # The progress records of accepted commands go after every write of theirs,
            # some of which (`attempting`, for a send chosen at once) were put after them.
            outbox.move_to_end(self.tables.records, self.progress_keys)
        if bounced:
            now = self.now_ms()
            async with STATE_LOCK:  # user records are the ingest agent's too
                for item in bounced:
                    key = (item.taken.partition, item.taken.queue_key)
                    self.suspect = suspect_for(key, item, "finished")
                    self._suppress(outbox, item, now)
                self.suspect = None
                await self.flush(outbox, staged)
        elif outbox:
            await self.flush(outbox, staged)
        self.recorded(finished)
        for item in finished:
            self.inflight.discard(item.taken.record_key)

    def _hand(self, suspect: Suspect | None) -> None:
        self.suspect = suspect

    def _count(self, command: Any, result: str, waited_s: float | None = None) -> None:
        tenant = command.get("tenant_id") if isinstance(command, dict) else None
        workflows = self.workflows(tenant if isinstance(tenant, str) else "")
        count_for_workflow(workflows, command, result, waited_s)

    def _start_calls(self, chosen: list[Taken]) -> None:
        # Only for partitions still this worker's: one that moved during the flush (or a
        # worker paused past its session, mailstream.kafka.membership) belongs to another
        # worker now, which decides from the durable records whether the send goes.
        owned = set(self.tables.queue.active_partitions())
        chosen = [t for t in chosen if t.partition in owned]
        first = (t.command.get("event_at") for t in chosen if t.record.attempts == 1)
        observe_path("calling", first, self.clock())
        for taken in chosen:
            self.inflight.add(taken.record_key)
            self.spawn(self._call(taken))

    async def _call(self, taken: Taken) -> None:
        while (wait := self.rt.fair.pacer.start(self.monotonic())) > 0:
            await asyncio.sleep(wait)
        started = time.perf_counter()
        outcome: Accepted | SendFailure
        tenant = taken.record.tenant_id
        provider = self.rt.provider_for(tenant)
        try:
            message = compose(taken.command, self.rt.sender_for(tenant), self.rt.tokens)
            outcome = await provider.send(message)
        except SendFailure as failure:
            outcome = failure
        except Exception as exc:  # a provider bug must not lose the send
            logger.exception("provider %s failed unexpectedly", provider.name)
            outcome = SendFailure("error", repr(exc), retryable=True)
        await self.results.put(Finished(taken, outcome, started))

    def taken_of(self, item: Finished) -> Taken:
        return item.taken

    def settle(self, outbox: Outbox) -> tuple[list[Finished], list[Finished]]:
        """The outcomes of finished calls, in ``outbox``: returns the calls settled (taken
        from ``settling`` once the outbox is durable) and the hard bounces among them, to
        record on their users."""
        finished = self.collect(set(self.tables.queue.active_partitions()))
        now = self.now_ms()
        bounced: list[Finished] = []
        for item in finished:
            taken = item.taken
            p, key = taken.partition, taken.queue_key
            self.suspect = suspect_for((p, key), item, "finished")
            tenant, category = taken.record.tenant_id, taken.record.category
            provider = self.rt.provider_for(tenant).name
            label = self.tenancy.label(tenant)
            metrics.labelled(metrics.PROVIDER_SECONDS, provider).observe(
                time.perf_counter() - item.started
            )
            s: Settlement = settle(
                taken.record, item.outcome, self.rt.retry, now, self.jitter(), "delivery", provider
            )
            self.tables.settled(outbox, p, key, taken.record_key, taken.raw, s)
            if s.result == SENT:
                waited = first_attempt_wait(s.record, taken.command.get("event_at"), now)
                if waited is not None:
                    metrics.EVENT_TO_SEND.observe(waited)
                metrics.labelled(metrics.SENDS, provider, category, "sent", label).inc()
            else:
                metrics.SENDS.labels(provider, category, s.result, label).inc()
                waited = None
            self._count(taken.command, s.result, waited)
            if s.suppress:
                bounced.append(item)
        self.suspect = None
        return finished, bounced

    async def give_up(self, suspect: Suspect, reason: str) -> None:
        """A send the dispatcher keeps failing on: dead-lettered, off the queue, its record
        final, so it is neither lost silently nor attempted again."""
        p, key, item = suspect.item
        if item is not None:
            outcome = item.outcome
            reason += (
                f"; the provider had accepted it as {outcome.provider_message_id}"
                if isinstance(outcome, Accepted)
                else f"; the provider had answered {outcome.code}: {outcome.message}"
            )
        record_key = QueueKey.decode(key).record_key
        outbox = Outbox()
        raw = item.taken.raw if item is not None else None
        record = self.tables.give_up(outbox, p, key, record_key, raw, reason, self.now_ms())
        await self.flush(outbox)
        metrics.DEAD_LETTERS.labels("dispatcher_error").inc()
        if record is not None:
            label = self.tenancy.label(record.tenant_id)
            metrics.DELIVERIES.labels(record.category, "dead_lettered", label).inc()
        if item is not None:
            self.settling.remove(item)
            self.inflight.discard(record_key)

    def _suppress(self, outbox: Outbox, item: Finished, now: int) -> None:
        """An address the provider says does not exist: a hard bounce, so no more email."""
        command, failure = item.taken.command, item.outcome
        assert isinstance(failure, SendFailure)
        p = item.taken.partition
        key = user_key(command["tenant_id"], command["user_id"])
        stored = self.users.get(p, key)
        if stored is None:
            return
        user = UserState.decode(stored)
        provider = self.rt.provider_for(command["tenant_id"]).name
        source = f"delivery:{provider}:{failure.code}"
        lifecycle.suppress(user, "hard_bounce", source, now, failure.message[:200])
        outbox.put(self.users, p, key, user.encode())
        metrics.SUPPRESSED.labels("hard_bounce").inc()
