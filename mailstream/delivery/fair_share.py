"""Fair delivery across tenants: whose send goes next, within whose token bucket.

Sends are served in classes, transactional before marketing. Within a class the
tenants with ready sends take turns, one send per turn, starting after the tenant
served last (round-robin, carried over from one dispatch to the next), so a tenant with
ten thousand sends queued waits its turn like one with a single send. Each tenant has
its own token bucket (its ``rate_share`` of the provider limit, or all of it) inside the
provider's (mailstream.delivery.pacing.Pacer): a send needs a token from both.

Pure: the caller passes the time and the queued sends in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

from mailstream.delivery.pacing import GO, Admission, Pacer, TokenBucket, share

T = TypeVar("T")

TENANT_WAIT = "tenant_wait"  # this tenant's share of the rate is used up: serve others

# What the caller did with the send it was offered.
CHOSEN = "chosen"  # it goes: the tenant's turn is over
SKIP = "skip"  # not this one (in flight, deferred, dropped, its domain is busy): next
LANE_DONE = "lane_done"  # nothing more of this tenant now (its bucket or quota)
STOP = "stop"  # nothing more for anyone now (the provider limit, no room)

# Queue ranks (mailstream.delivery.state_machine.rank) by class, served in this order.
CLASSES: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3, 4, 5))


@dataclass(slots=True)
class FairPacer:
    """Per-tenant token buckets inside the provider's pacer, and each class's turn."""

    pacer: Pacer
    shares: Mapping[str, float | None]  # tenant -> part of the provider rate (None: all)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    # class index -> the tenant served last in it
    last: dict[int, str] = field(default_factory=dict)
    fraction: float = 1.0

    def _limits(self, tenant: str) -> tuple[float, float]:
        part = self.shares.get(tenant) or 1.0
        rate = self.pacer.rate * part * self.fraction
        return rate, max(1.0, self.pacer.burst * part * self.fraction)

    def bucket(self, tenant: str) -> TokenBucket:
        found = self.buckets.get(tenant)
        if found is None:
            found = self.buckets[tenant] = TokenBucket(*self._limits(tenant))
        return found

    def resize(self, owned: int, partitions: int, now: float) -> None:
        """This worker's share after a rebalance, for the provider and every tenant."""
        self.pacer.resize(owned, partitions, now)
        fraction = share(1.0, owned, partitions)
        if fraction == self.fraction:
            return
        self.fraction = fraction
        for tenant, b in self.buckets.items():
            b.resize(*self._limits(tenant), now)

    def admit(
        self, tenant: str, domain: str, now: float, today: date, sent_today: int
    ) -> Admission:
        """Whether one send of ``tenant`` to ``domain`` may go now; when it may, its
        tokens are taken from the tenant's bucket and the provider's."""
        mine = self.bucket(tenant)
        wait = mine.take(now)
        if wait > 0:
            return Admission(TENANT_WAIT, wait)
        admission = self.pacer.admit(domain, now, today, sent_today)
        if admission.verdict != GO:
            mine.refund()
        return admission

    def order(self, klass: int, tenants: Sequence[str]) -> list[str]:
        """The tenants in the order they take turns: sorted, starting after the one
        served last in this class."""
        ring = sorted(tenants)
        last = self.last.get(klass)
        if last is None:
            return ring
        after = [t for t in ring if t > last]
        return after + [t for t in ring if t <= last]

    def serve(
        self,
        klass: int,
        queues: Mapping[str, Iterator[T]],
        offer: Callable[[str, T], str],
    ) -> bool:
        """Offer the tenants' queued sends of one class, a turn each, until every queue
        is used up or ``offer`` says STOP; returns False on STOP.

        ``offer`` answers CHOSEN (the send goes; the tenant's turn ends), SKIP (try the
        tenant's next send), LANE_DONE (nothing more of this tenant in this round of
        dispatch) or STOP.
        """
        active = self.order(klass, [t for t in queues])
        while active:
            still: list[str] = []
            for tenant in active:
                outcome = self._turn(tenant, queues[tenant], offer)
                if outcome == STOP:
                    return False
                if outcome == CHOSEN:
                    self.last[klass] = tenant
                    still.append(tenant)
            active = still
        return True

    @staticmethod
    def _turn(tenant: str, queue: Iterator[T], offer: Callable[[str, T], str]) -> str:
        for item in queue:
            outcome = offer(tenant, item)
            if outcome != SKIP:
                return outcome
        return LANE_DONE
