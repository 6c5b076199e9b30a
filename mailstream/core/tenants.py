"""Tenants: which are known, how they are labelled, their event-rate and daily quotas.

Pure: the caller passes the time (seconds, any monotonic origin) and the counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mailstream.delivery.pacing import TokenBucket, share

# The metric label of a tenant that is allowed but not configured; not a valid tenant id,
# so it cannot clash with one.
OTHER_LABEL = "(other)"


@dataclass(frozen=True, slots=True)
class Quota:
    """A tenant's limits; None: no limit."""

    events_per_second: float | None = None
    sends_per_day: int | None = None
    over_daily_quota: str = "defer"  # "defer" (to the next UTC day) or "drop"
    rate_share: float | None = None  # part of delivery.rate_limit, in (0, 1]


class Tenancy:
    """The configured tenants and what to do with the others.

    A configured tenant (and the default tenant) has its own settings, quota, delivery
    lane and metric label. An unconfigured one is refused (``known`` is False) unless
    unknown tenants are allowed: then it runs with the default settings, shares the
    default tenant's delivery lane and is labelled ``(other)`` in metrics, so label
    values stay bounded by the config.
    """

    def __init__(
        self,
        default: str,
        quotas: Mapping[str, Quota] | None = None,
        allow_unknown: bool = True,
    ) -> None:
        self.default = default
        self.quotas: dict[str, Quota] = dict(quotas or {})
        self.quotas.setdefault(default, Quota())
        self.allow_unknown = allow_unknown

    @property
    def names(self) -> list[str]:
        """The configured tenants and the default one, in a stable order."""
        return sorted(self.quotas)

    def known(self, tenant: str) -> bool:
        return tenant in self.quotas or self.allow_unknown

    def lane(self, tenant: str) -> str:
        """Whose settings, quota and delivery lane the tenant's work uses."""
        return tenant if tenant in self.quotas else self.default

    def label(self, tenant: str) -> str:
        return tenant if tenant in self.quotas else OTHER_LABEL

    def labels(self) -> list[str]:
        return self.names + ([OTHER_LABEL] if self.allow_unknown else [])

    def quota(self, tenant: str) -> Quota:
        return self.quotas[self.lane(tenant)]


class EventRates:
    """Each tenant's events-per-second quota on this worker: a token bucket per tenant
    holding the worker's share, in proportion to the event partitions it owns (as the
    delivery rate is shared; see mailstream.delivery.pacing.share)."""

    def __init__(self, tenancy: Tenancy) -> None:
        self.tenancy = tenancy
        self.fraction = 1.0
        self.buckets: dict[str, TokenBucket] = {}
        for name in tenancy.names:
            rate = tenancy.quotas[name].events_per_second
            if rate is not None:
                self.buckets[name] = TokenBucket(rate, max(1.0, rate))

    def resize(self, owned: int, partitions: int, now: float) -> None:
        fraction = share(1.0, owned, partitions)
        if fraction == self.fraction:
            return
        self.fraction = fraction
        for name, bucket in self.buckets.items():
            rate = (self.tenancy.quotas[name].events_per_second or 0.0) * fraction
            bucket.resize(rate, max(1.0, rate), now)

    def admit(self, tenant: str, now: float) -> bool:
        """Whether one more event of the tenant may be processed now (a token is taken)."""
        bucket = self.buckets.get(self.tenancy.lane(tenant))
        return bucket is None or bucket.take(now) == 0.0


def daily_allowance(quota: Quota, fraction: float) -> float | None:
    """This worker's part of the tenant's sends per day, or None: no limit."""
    if quota.sends_per_day is None:
        return None
    return quota.sends_per_day * fraction


def over_daily_quota(quota: Quota, fraction: float, sent_today: int) -> bool:
    allowance = daily_allowance(quota, fraction)
    return allowance is not None and sent_today >= allowance
