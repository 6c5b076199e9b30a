"""Delivery pacing: token buckets, the warm-up calendar and retry backoff.

Pure: the caller passes the time (seconds, any monotonic origin, or a date) and, for
jitter, a random number; nothing here reads a clock or a random source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

_EPSILON = 1e-9


def share(total: float, owned: int, partitions: int) -> float:
    """This worker's part of a deployment-wide figure: in proportion to the send
    partitions it owns, so adding a worker does not raise the total."""
    if partitions <= 0 or owned <= 0:
        return 0.0
    return total * min(owned, partitions) / partitions


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0  # -1: full at the first use
    updated: float = 0.0

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
            return
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens and return 0, or take nothing and return the seconds until
        ``n`` tokens will be there."""
        self._refill(now)
        if self.tokens >= n - _EPSILON:  # waiting the returned time must be enough
            self.tokens = max(0.0, self.tokens - n)
            return 0.0
        if self.rate <= 0:
            return float("inf")
        return (n - self.tokens) / self.rate

    def refund(self, n: float = 1.0) -> None:
        """Give back tokens taken for a send that did not go after all."""
        self.tokens = min(self.burst, self.tokens + n)

    def resize(self, rate: float, burst: float, now: float) -> None:
        """A new share after a rebalance; tokens above the new burst are dropped."""
        self._refill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)


def warmup_cap(daily_caps: Sequence[int], start: date, today: date) -> int | None:
    """The day's send cap on a warming-up sender: ``daily_caps[0]`` on the start day (and
    before it), the next on the next day, and no cap once the list is used up."""
    day = (today - start).days
    if day < 0:
        return daily_caps[0] if daily_caps else None
    return daily_caps[day] if day < len(daily_caps) else None


def retry_delay(
    attempt: int,
    base: float,
    max_delay: float,
    jitter: float,
    retry_after: float | None = None,
) -> float:
    """Seconds before attempt ``attempt + 1``, after ``attempt`` failures (1 or more).

    Exponential (``base``, ``2 * base``, ``4 * base``, ... up to ``max_delay``) with equal
    jitter: half the step fixed, half scaled by ``jitter`` in [0, 1), so retries from
    many senders spread out. A provider's ``Retry-After`` is a floor, also when it is
    longer than ``max_delay``.
    """
    step = min(max_delay, base * 2 ** max(0, attempt - 1))
    delay = step / 2 + step / 2 * min(max(jitter, 0.0), 1.0)
    if retry_after is not None and retry_after > delay:
        return float(retry_after)
    return float(delay)


GO = "go"
DOMAIN_WAIT = "domain_wait"  # this recipient domain is at its limit: try other sends
RATE_WAIT = "rate_wait"  # the provider limit is reached: nothing more for now
WARMUP_CAP = "warmup_cap"  # today's warm-up cap is reached: nothing more today


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: str  # GO, DOMAIN_WAIT, RATE_WAIT or WARMUP_CAP
    wait: float = 0.0  # seconds until it may change (RATE_WAIT and DOMAIN_WAIT)


class Pacer:
    """This worker's share of the provider limit, the per-domain limits and the warm-up
    cap, deciding send by send whether one may go now."""

    def __init__(
        self,
        rate: float,
        burst: float,
        domain_rates: dict[str, float] | None = None,
        warmup_caps: Sequence[int] = (),
        warmup_start: date | None = None,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.domain_rates = {d.lower(): r for d, r in (domain_rates or {}).items()}
        self.warmup_caps = list(warmup_caps)
        self.warmup_start = warmup_start
        self.fraction = 1.0
        self.bucket = TokenBucket(rate, burst)
        # The same limit again, counted as calls start: calls chosen at an even pace
        # can start closer together, each after a flush of its own length.
        self.starts = TokenBucket(rate, burst)
        self.domains: dict[str, TokenBucket] = {}

    def resize(self, owned: int, partitions: int, now: float) -> None:
        fraction = share(1.0, owned, partitions)
        if fraction == self.fraction:
            return
        self.fraction = fraction
        for bucket in (self.bucket, self.starts):
            bucket.resize(self.rate * fraction, max(1.0, self.burst * fraction), now)
        for domain, bucket in self.domains.items():
            rate = self.domain_rates[domain] * fraction
            bucket.resize(rate, max(1.0, rate), now)

    def daily_cap(self, today: date) -> float | None:
        """This worker's share of today's warm-up cap, or None when there is none."""
        if self.warmup_start is None:
            return None
        cap = warmup_cap(self.warmup_caps, self.warmup_start, today)
        return None if cap is None else cap * self.fraction

    def admit(self, domain: str, now: float, today: date, sent_today: int) -> Admission:
        """Whether one send to ``domain`` may go now; when it may, its tokens are taken."""
        cap = self.daily_cap(today)
        if cap is not None and sent_today >= cap:
            return Admission(WARMUP_CAP)
        domain_bucket = self._domain_bucket(domain.lower())
        if domain_bucket is not None:
            wait = domain_bucket.take(now)
            if wait > 0:
                return Admission(DOMAIN_WAIT, wait)
        wait = self.bucket.take(now)
        if wait > 0:
            if domain_bucket is not None:
                domain_bucket.refund()
            return Admission(RATE_WAIT, wait)
        return Admission(GO)

    def start(self, now: float) -> float:
        """Seconds a chosen send must wait before its call starts (0: start now, its
        token taken): the provider limit held where the provider sees it."""
        return self.starts.take(now)

    def _domain_bucket(self, domain: str) -> TokenBucket | None:
        bucket = self.domains.get(domain)
        if bucket is None and domain in self.domain_rates:
            rate = self.domain_rates[domain] * self.fraction
            bucket = self.domains[domain] = TokenBucket(rate, max(1.0, rate))
        return bucket
