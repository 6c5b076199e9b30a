"""Choosing the sends that go next: transactional before marketing, the tenants with
ready sends taking turns within each class (mailstream.delivery.fair_share), each send
paced, held over its tenant's sends per day, or withheld when its user or address was
suppressed since it was queued.

The decisions are mailstream.delivery.dispatch_plan's; this reads the tables and the
suppression list, and writes the records the decisions change into the round's outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterator
from typing import Any, Protocol

import orjson

from mailstream.core.tenants import Tenancy
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery.compose import Sender, recipient_domain
from mailstream.delivery.dispatch_plan import (
    ORPHANED,
    SendDay,
    Taken,
    admission_answer,
    hold,
    resolve_orphan,
)
from mailstream.delivery.dispatch_shell import QueueTables
from mailstream.delivery.fair_share import CHOSEN, CLASSES, SKIP, STOP, FairPacer
from mailstream.delivery.guarded_loop import Suspect
from mailstream.delivery.retention import sent_key
from mailstream.delivery.state_machine import (
    Delivery,
    QueueKey,
    RetryPolicy,
    attempt,
    rank_bounds,
    suppressed_since,
    withheld,
)
from mailstream.delivery.unsubscribe_links import UnsubscribeTokens
from mailstream.observability import metrics
from mailstream.providers.base import Provider
from mailstream.state.staged_flush import Outbox
from mailstream.suppression.entries import Suppression

logger = logging.getLogger(__name__)


class SendRuntime(Protocol):
    """What delivery needs of mailstream.runtime.components.DeliveryRuntime."""

    fair: FairPacer
    tokens: UnsubscribeTokens
    retry: RetryPolicy
    concurrency: int

    def provider_for(self, tenant: str) -> Provider: ...

    def sender_for(self, tenant: str) -> Sender: ...

    def all_providers(self) -> list[Provider]: ...


class AddressList(Protocol):
    """The global suppression list (mailstream.suppression.global_list)."""

    def get(self, address: str) -> Suppression | None: ...


def describe(queue_key: bytes, partition: int, state: str = "queued") -> str:
    """A send for a log line, even from a key that does not decode."""
    try:
        send_id = QueueKey.decode(queue_key).send_id
    except Exception:
        send_id = repr(queue_key)
    return f"{state} send {send_id} on partition {partition}"


def suspect_for(key: tuple[int, bytes], item: Any, state: str) -> Suspect:
    """The send in hand (mailstream.delivery.guarded_loop): ``item`` is its finished call,
    if it was called, for giving it up."""
    p, queue_key = key
    return Suspect(key, describe(queue_key, p, state), (p, queue_key, item))


class SendChooser:
    """Chooses a round's sends. ``count(command, result)`` counts an outcome for its
    workflow; ``hand(suspect)`` tells the dispatcher loop which send is in hand (None:
    none), so a send that keeps failing the round can be given up."""

    def __init__(
        self,
        *,
        tables: QueueTables,
        users: Any,
        runtime: SendRuntime,
        tenancy: Tenancy,
        suppression_list: AddressList,
        partitions: int,
        count: Callable[[Any, str], None],
        hand: Callable[[Suspect | None], None],
    ) -> None:
        self.tables, self.users, self.rt = tables, users, runtime
        self.tenancy, self.suppression_list = tenancy, suppression_list
        self.partitions, self.count, self.hand = partitions, count, hand

    def choose(
        self, outbox: Outbox, room: int, in_flight: Container[bytes], now: int, mono: float
    ) -> list[Taken]:
        """Choose the sends that may go now, up to ``room``: transactional before
        marketing, the tenants with ready sends taking turns within each
        (mailstream.delivery.fair_share). Their `attempting` records (and the sent-today
        counts) go in ``outbox``."""
        partitions = self.tables.queue.active_partitions() if room > 0 else []
        if not partitions:
            return []
        fair = self.rt.fair
        fair.resize(len(partitions), self.partitions, mono)
        lanes = self.tenancy.names
        day = SendDay.start(now, partitions, lanes, self._read_count)
        chosen: list[Taken] = []

        def queue(lane: str, ranks: tuple[int, ...]) -> Iterator[tuple[int, bytes]]:
            for r in ranks:
                start, end = rank_bounds(r, now, lane)
                for p in partitions:
                    # the store as this round's flush will leave it: with the commands
                    # submitted to this round, which may go in it
                    yield from (
                        (p, k)
                        for k in outbox.keys_between(self.tables.queue, p, start, end, room + 50)
                    )

        for klass, ranks in enumerate(CLASSES):

            def offer(lane: str, item: tuple[int, bytes], klass: int = klass) -> str:
                # the send in hand, should considering it raise (mailstream.delivery.guarded_loop)
                self.hand(suspect_for(item, None, "queued"))
                quota = self.tenancy.quotas[lane]
                until = day.hold_until(klass, lane, quota, fair.fraction)
                verdict = self._consider(item, lane, now, mono, day, outbox, until, in_flight)
                self.hand(None)
                if not isinstance(verdict, Taken):
                    return verdict
                chosen.append(verdict)
                day.choose(lane, self.tenancy.lane(verdict.record.tenant_id), verdict.partition)
                return STOP if len(chosen) >= room else CHOSEN

            if not fair.serve(klass, {lane: queue(lane, ranks) for lane in lanes}, offer):
                break
        self.hand(None)  # what fails from here on is no one send's doing
        for w in day.writes():
            outbox.put(self.tables.records, w.partition, sent_key(w.day, w.lane), b"%d" % w.value)
        return chosen

    def _read_count(self, p: int, day: str, lane: str | None) -> int:
        raw = self.tables.records.get(p, sent_key(day, lane))
        return int(raw) if raw is not None else 0

    def _consider(
        self,
        item: tuple[int, bytes],
        lane: str,
        now: int,
        mono: float,
        day: SendDay,
        outbox: Outbox,
        hold_until: int | None,
        in_flight: Container[bytes],
    ) -> Taken | str:
        """A queued send: taken (its record `attempting`), or what the fair scheduler is
        to do next (SKIP this one, LANE_DONE for its tenant, STOP for everyone).
        ``hold_until``: its tenant is over its sends per day (dispatch_plan.SendDay)."""
        p, key = item
        qk = QueueKey.decode(key)
        t = self.tables
        entry = t.entry(outbox, p, key, qk.record_key, qk.record_key in in_flight)
        if entry is None:
            return SKIP
        assert entry.record is not None and entry.raw is not None
        record, raw = entry.record, entry.raw
        label = self.tenancy.label(record.tenant_id)
        if entry.verdict == ORPHANED:
            # Attempting, but not by this process: its worker died during the call.
            orphan = resolve_orphan(record, now)
            t.write(outbox, p, qk.record_key, record)
            if orphan.dead_letter is not None:
                # Listed on the dead-letter topic, so an operator can check with the provider.
                t.drop(outbox, p, key)
                t.dead_letter(outbox, p, record, raw, orphan.dead_letter)
                self.count(orjson.loads(raw), "unknown")
                logger.warning("send %s: %s", qk.send_id, orphan.dead_letter.text)
            result = "requeued" if orphan.requeued else "unknown"
            metrics.DELIVERIES.labels(record.category, result, label).inc()
            return SKIP
        if hold_until is not None:
            held = hold(record, hold_until, now)
            if held.requeue_key is not None:
                t.requeue(outbox, p, key, held.requeue_key, raw)
            else:
                t.drop(outbox, p, key)
            t.write(outbox, p, qk.record_key, record)
            metrics.DELIVERIES.labels(record.category, held.result, label).inc()
            metrics.TENANT_QUOTA.labels(label, "sends_per_day", held.action).inc()
            return SKIP
        command = orjson.loads(raw)
        admission = self.rt.fair.admit(
            lane, recipient_domain(command["to"]), mono, day.day, day.sent()
        )
        answer = admission_answer(admission.verdict)
        if answer != CHOSEN:
            if answer != SKIP:
                metrics.PACER_WAITS.labels(admission.verdict).inc()
            return answer
        # Checked last, just before the call: a send waiting its turn is considered in
        # every round, and reading the user's record each time would cost more than
        # the send. A send withheld here has taken its token, as a send would have.
        try:
            listed = self.suppression_list.get(command["to"])
        except RuntimeError:  # the list is not open (yet): the send waits for it
            return SKIP
        why = suppressed_since(record.category, self._own_suppressions(p, record), listed)
        if why is not None:
            withheld(record, why, now)
            t.drop(outbox, p, key)
            t.write(outbox, p, qk.record_key, record)
            metrics.DELIVERIES.labels(record.category, "suppressed", label).inc()
            self.count(command, "suppressed")
            logger.info("send %s not sent: %s", qk.send_id, why)
            return SKIP
        attempt(record, now)
        t.write(outbox, p, qk.record_key, record)
        return Taken(p, key, qk.record_key, record, raw, command)

    def _own_suppressions(self, p: int, record: Delivery) -> list[Suppression]:
        """The recipient's own suppressions, from their user record: sends are keyed by
        user id, so the record is in the same partition of the users table."""
        stored = self.users.get(p, user_key(record.tenant_id, record.user_id))
        return list(UserState.decode(stored).suppressions.values()) if stored else []
