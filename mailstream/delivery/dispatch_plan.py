"""Choosing what a dispatcher sends next: what a queue entry turns out to be, what an
orphaned attempt becomes, whether a tenant's send waits for tomorrow, and the day's send
counts a round of dispatch starts from and adds to.

Both dispatchers (email delivery, webhook calls) look at each queue entry the same way:

queue entry --its record is being called by this worker--------> IN_FLIGHT: next entry
            --no record, or another key, or final, or no command-> STALE: delete the entry
            --attempting, but nobody here is calling it----------> ORPHANED (resolve_orphan)
            --queued---------------------------------------------> READY: the dispatcher's
                                                                   own checks, then attempt

Pure: the caller passes the records it read, the time (epoch ms) and the quotas in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from mailstream.core.tenants import Quota, over_daily_quota
from mailstream.delivery.fair_share import CHOSEN, LANE_DONE, SKIP, STOP, TENANT_WAIT
from mailstream.delivery.pacing import DOMAIN_WAIT, GO
from mailstream.delivery.state_machine import (
    ATTEMPTING,
    FINAL,
    Delivery,
    dropped,
    orphaned,
    postponed,
)

IN_FLIGHT = "in_flight"
STALE = "stale"
ORPHANED = "orphaned"
READY = "ready"

MARKETING_CLASS = 1  # the index of the marketing ranks in mailstream.delivery.fair_share.CLASSES


@dataclass(frozen=True, slots=True)
class Entry:
    """What a queue entry turned out to be; ``record`` and ``raw`` are set for ORPHANED
    and READY."""

    verdict: str  # IN_FLIGHT, STALE, ORPHANED or READY
    record: Delivery | None = None
    raw: bytes | None = None  # the command as queued


def triage(queue_key: bytes, stored: bytes | None, raw: bytes | None, in_flight: bool) -> Entry:
    """A queue entry under ``queue_key`` holding ``raw``, whose record is ``stored``.
    STALE entries were left by a crash between a record's write and its queue entry's
    deletion: the caller deletes them."""
    if in_flight:
        return Entry(IN_FLIGHT)
    record = Delivery.decode(stored) if stored is not None else None
    if record is None or record.queue_key != queue_key or record.state in FINAL or raw is None:
        return Entry(STALE)
    return Entry(ORPHANED if record.state == ATTEMPTING else READY, record, raw)


@dataclass(frozen=True, slots=True, eq=False)
class Taken:
    """A queued send or call chosen to go now, its record already ``attempting``."""

    partition: int
    queue_key: bytes
    record_key: bytes
    record: Delivery
    raw: bytes  # the command as queued
    command: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetterNote:
    """A command to put on the dead-letter topic: its reason code and what to tell an
    operator; ``attempts``: with the record's history of failed attempts."""

    code: str
    text: str
    attempts: bool = True


UNKNOWN_OUTCOME = (
    "the worker stopped while the provider was called; marketing is not sent"
    " twice, so whether it was delivered is unknown"
)


@dataclass(frozen=True, slots=True)
class Orphan:
    """An ``attempting`` record nobody is attempting, resolved: queued again, or given up
    with the note for the dead-letter topic (the outcome of the call is unknown)."""

    requeued: bool
    dead_letter: DeadLetterNote | None = None


def resolve_orphan(record: Delivery, now: int, resend: bool | None = None) -> Orphan:
    """The worker that made ``record`` ``attempting`` died during the call
    (mailstream.delivery.state_machine.orphaned changes the record). ``resend``: queue it
    again whatever its category (a webhook receiver drops repeats by the id)."""
    if orphaned(record, now, resend):
        return Orphan(True)
    return Orphan(False, DeadLetterNote("unknown_outcome", UNKNOWN_OUTCOME, attempts=False))


def admission_answer(verdict: str) -> str:
    """What the fair scheduler is to do after the pacer's ``verdict`` on a send
    (mailstream.delivery.fair_share): CHOSEN for GO, else SKIP this send (its domain is
    at its limit), LANE_DONE (its tenant's share is used up) or STOP (everyone waits)."""
    if verdict == GO:
        return CHOSEN
    if verdict == DOMAIN_WAIT:
        return SKIP
    if verdict == TENANT_WAIT:
        return LANE_DONE
    return STOP


QUOTA_DEFERRED = "quota_deferred"
QUOTA_DROPPED = "quota_dropped"


@dataclass(frozen=True, slots=True)
class Held:
    """A marketing send over its tenant's sends per day, not taken: queued again under
    ``requeue_key`` (deferred to the next UTC day) or dropped (``requeue_key`` None)."""

    result: str  # QUOTA_DEFERRED or QUOTA_DROPPED
    requeue_key: bytes | None

    @property
    def action(self) -> str:
        return "deferred" if self.requeue_key is not None else "dropped"


def hold(record: Delivery, until: int, now: int) -> Held:
    """Hold ``record`` back until ``until`` (epoch ms), or drop it when ``until`` is 0."""
    if until:
        postponed(record, until, now)
        return Held(QUOTA_DEFERRED, record.queue_key)
    dropped(record, now)
    return Held(QUOTA_DROPPED, None)


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class CountWrite:
    """A sends counter to write: a partition's sends on ``day`` (ISO), or only those of
    a delivery ``lane`` when it is set."""

    partition: int
    day: str
    lane: str | None
    value: int


@dataclass
class SendDay:
    """The UTC day's sends, as a round of dispatch counts them: per partition (the
    warm-up cap) and per lane and partition (each tenant's sends per day), as stored when
    the round started, plus the sends it chooses."""

    day: date
    by_partition: dict[int, int]
    by_lane: dict[tuple[str, int], int]
    # (offered lane, counted lane, partition) of each send chosen this round
    chosen: list[tuple[str, str, int]] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        now: int,
        partitions: Iterable[int],
        lanes: Iterable[str],
        read: Callable[[int, str, str | None], int],
    ) -> SendDay:
        """The counts of the day of ``now`` (epoch ms); ``read(partition, day, lane)``
        reads a stored counter (lane None: the partition's)."""
        day = datetime.fromtimestamp(now / 1000, tz=UTC).date()
        iso = day.isoformat()
        parts = list(partitions)
        return cls(
            day,
            {p: read(p, iso, None) for p in parts},
            {(lane, p): read(p, iso, lane) for lane in lanes for p in parts},
        )

    @property
    def tomorrow_ms(self) -> int:
        return day_start_ms(self.day + timedelta(days=1))

    def sent(self) -> int:
        """Sends today on this worker's partitions, those chosen this round included."""
        return sum(self.by_partition.values()) + len(self.chosen)

    def lane_sent(self, lane: str) -> int:
        stored = sum(n for (name, _), n in self.by_lane.items() if name == lane)
        return stored + sum(1 for offered, _, _ in self.chosen if offered == lane)

    def hold_until(self, klass: int, lane: str, quota: Quota, fraction: float) -> int | None:
        """None: a send of class ``klass`` in ``lane`` may go as far as the quota goes;
        else its tenant is over its sends per day (``fraction``: this worker's part of
        it) and the send is held until then (epoch ms), or dropped when 0."""
        if klass != MARKETING_CLASS or not over_daily_quota(quota, fraction, self.lane_sent(lane)):
            return None
        return self.tomorrow_ms if quota.over_daily_quota == "defer" else 0

    def choose(self, offered_lane: str, counted_lane: str, partition: int) -> None:
        """A send offered in ``offered_lane`` was chosen; it counts towards the sends
        of ``counted_lane`` (its tenant's lane now) on ``partition``."""
        self.chosen.append((offered_lane, counted_lane, partition))

    def writes(self) -> list[CountWrite]:
        """The counters this round's choices change, with their new values."""
        iso = self.day.isoformat()
        per_partition: dict[int, int] = {}
        per_lane: dict[tuple[str, int], int] = {}
        for _, lane, p in self.chosen:
            per_partition[p] = per_partition.get(p, 0) + 1
            per_lane[(lane, p)] = per_lane.get((lane, p), 0) + 1
        found = [
            CountWrite(p, iso, None, self.by_partition.get(p, 0) + n)
            for p, n in per_partition.items()
        ]
        found += [
            CountWrite(p, iso, lane, self.by_lane.get((lane, p), 0) + n)
            for (lane, p), n in per_lane.items()
        ]
        return found
