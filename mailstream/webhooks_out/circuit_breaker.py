"""A circuit breaker, one per webhook URL: closed, open, half-open.

closed --N consecutive failures--> open --cool-down over, one probe let through-->
half-open --the probe succeeds--> closed
          --the probe fails-----> open (a new cool-down)

Pure: the caller passes the time (seconds, any monotonic origin) and says which
outcomes are failures. While the breaker is open no call goes out; the caller holds the
calls back (``hold_until``) instead of making them.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
# for the gauge: higher is worse
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

CALL = "call"  # a normal call, breaker closed
PROBE = "probe"  # the one trial call of a half-open breaker


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int = 5  # consecutive failures that open the breaker
    cool_down: float = 30.0  # seconds open before one probe is let through


@dataclass(slots=True)
class Breaker:
    settings: BreakerSettings
    state: str = CLOSED
    failures: int = 0  # consecutive, while closed
    opened_at: float = 0.0
    probing: bool = False  # half-open with its probe out

    def allow(self, now: float) -> str | None:
        """May a call go out at ``now``? CALL, PROBE (the caller must report its outcome
        with ``probe=True``), or None: hold it back."""
        if self.state == CLOSED:
            return CALL
        if self.state == OPEN:
            if now < self.opened_at + self.settings.cool_down:
                return None
            self.state = HALF_OPEN
        if self.probing:
            return None
        self.probing = True
        return PROBE

    def hold_until(self, now: float) -> float | None:
        """When a held call may be tried again: the end of the cool-down while open;
        None while a probe is out (its outcome decides)."""
        if self.state == OPEN:
            return self.opened_at + self.settings.cool_down
        return None

    def record(self, ok: bool, now: float, probe: bool = False) -> str | None:
        """The outcome of a call this breaker allowed. Returns the new state when it
        changed, else None.

        Only the probe decides a half-open breaker, and an open breaker ignores the late
        outcomes of calls that went out before it opened: it waits for its cool-down.
        """
        if probe:
            self.probing = False
            if self.state != HALF_OPEN:  # cannot happen through allow(); be safe
                return None
            if ok:
                self.state, self.failures = CLOSED, 0
                return CLOSED
            self.state, self.opened_at = OPEN, now
            return OPEN
        if self.state != CLOSED:
            return None
        if ok:
            self.failures = 0
            return None
        self.failures += 1
        if self.failures >= self.settings.failures:
            self.state, self.opened_at, self.failures = OPEN, now, 0
            return OPEN
        return None

    def abandon_probe(self) -> None:
        """The probe was let through but never made (the worker stopped, the call was
        cancelled): the next call may probe."""
        self.probing = False
