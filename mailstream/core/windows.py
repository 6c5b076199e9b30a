"""Window math: event sampling and throttling, frequency caps and quiet hours.

Pure functions of the stored window state and a time (epoch ms); nothing here reads a
clock. Every window keeps a bounded amount of state: a sampling rule one timestamp and
one value, a throttle at most ``limit`` timestamps, the caps at most the largest cap.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from hashlib import blake2b
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_MS = 86_400_000
_MISSING: Any = object()

# ---- sampling and throttling of incoming events -------------------------------------


@dataclass(frozen=True, slots=True)
class SamplingRule:
    rate: float = 1.0  # share of events kept, chosen by event id
    min_interval_ms: int = 0  # per user: drop an event this soon after the last kept one
    watch: tuple[str, ...] | None = None  # payload path whose change keeps an event anyway
    threshold: float = 0.0  # for numbers: the smallest difference that counts as a change


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    limit: int  # at most this many events of the type per user ...
    per_ms: int  # ... in any window of this length


def sampled_in(event_id: str, rate: float) -> bool:
    """Deterministic by event id: a replay or a re-sent event gets the same answer."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = blake2b(event_id.encode(), digest_size=8, person=b"ms-sample").digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def watched_value(payload: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = payload
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def significant_change(previous: Any, current: Any, threshold: float) -> bool:
    """Whether ``current`` differs enough from the last kept value.

    Numbers must differ by at least ``threshold`` (any difference when it is 0); other
    values must differ at all. A value where there was none is a change; none is not.
    """
    if current is _MISSING:
        return False
    if previous is _MISSING:
        return True
    if _is_number(previous) and _is_number(current):
        difference = abs(current - previous)
        return bool(difference >= threshold if threshold > 0 else difference != 0)
    # JSON true and 1 are different values, though Python finds them equal
    return type(previous) is not type(current) or bool(previous != current)


SampleState = list[Any]  # [time of the last kept event (ms), its watched value or absent]


def sample(
    rule: SamplingRule,
    last: SampleState | None,
    event_id: str,
    at: int,
    payload: dict[str, Any],
) -> SampleState | None:
    """The new state when the event is kept, None when it is sampled out.

    A significant change of the watched field keeps the event whatever the rate and
    the interval say.
    """
    value = _MISSING if rule.watch is None else watched_value(payload, rule.watch)
    kept = [at] if value is _MISSING else [at, value]
    if rule.watch is not None:
        previous = last[1] if last is not None and len(last) > 1 else _MISSING
        if significant_change(previous, value, rule.threshold):
            return kept
    if not sampled_in(event_id, rule.rate):
        return None
    if last is not None and rule.min_interval_ms and at - last[0] < rule.min_interval_ms:
        return None
    return kept


def throttle(rule: ThrottleRule, stamps: Sequence[int], at: int) -> list[int] | None:
    """The window with ``at`` added when the event is allowed, None when it is throttled.

    The window holding ``at`` is (at - per, at]: an event exactly ``per`` after an earlier
    one no longer counts it. Only allowed events enter the window, so it never holds
    more than ``limit`` timestamps.
    """
    recent = [s for s in stamps if s > at - rule.per_ms]
    if len(recent) >= rule.limit:
        return None
    recent.append(at)
    return recent


# ---- time zones ---------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def zone(name: Any, default: ZoneInfo) -> ZoneInfo:
    """The user's IANA time zone, or ``default`` when the trait is missing or unknown."""
    if isinstance(name, str) and 0 < len(name) <= 64:
        return _zone(name) or default
    return default


def _local(at_ms: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(tz)


def _epoch_ms(day: date, clock: time, tz: ZoneInfo) -> int:
    """A local wall-clock time as epoch ms. A time skipped by a DST change resolves to
    the same distance past the change (02:30 on a spring-forward night is 03:30)."""
    local = datetime.combine(day, clock, tzinfo=tz)
    return int(local.astimezone(UTC).timestamp() * 1000)


# ---- frequency caps -----------------------------------------------------------------

Calendar = Literal["day", "week"]


@dataclass(frozen=True, slots=True)
class Cap:
    max: int
    per_ms: int | None = None  # a sliding window of this length ...
    calendar: Calendar | None = None  # ... or the user's calendar day or week (Monday on)

    def horizon_ms(self) -> int:
        """How far back a send can still count against this cap."""
        if self.per_ms is not None:
            return self.per_ms
        return (8 if self.calendar == "week" else 2) * DAY_MS  # a DST day is 25 h


def _period_start(day: date, calendar: Calendar) -> date:
    return day - timedelta(days=day.weekday()) if calendar == "week" else day


def cap_free_at(cap: Cap, sent: Sequence[int], now: int, tz: ZoneInfo) -> int:
    """The earliest time at or after ``now`` when one more send fits under the cap."""
    if cap.per_ms is not None:
        # A send dated after now (another worker's clock) counts as made now, as the
        # calendar caps count it, so the answer only falls as time passes.
        recent = sorted(min(s, now) for s in sent if s > now - cap.per_ms)
        if len(recent) < cap.max:
            return now
        # the oldest sends must age out until only max - 1 remain
        return recent[len(recent) - cap.max] + cap.per_ms
    assert cap.calendar is not None
    start = _period_start(_local(now, tz).date(), cap.calendar)
    in_period = sum(1 for s in sent if _local(min(s, now), tz).date() >= start)
    if in_period < cap.max:
        return now
    length = 7 if cap.calendar == "week" else 1
    return _epoch_ms(start + timedelta(days=length), time(0), tz)


def caps_free_at(caps: Sequence[Cap], sent: Sequence[int], now: int, tz: ZoneInfo) -> int:
    """The earliest time every cap allows one more send.

    Counts only fall as time passes (no send is made meanwhile), so the latest of the
    per-cap answers satisfies them all.
    """
    return max((cap_free_at(cap, sent, now, tz) for cap in caps), default=now)


def prune_sent(caps: Sequence[Cap], sent: Sequence[int], now: int) -> list[int]:
    """The send times that can still count against a cap, newest last."""
    if not caps:
        return []
    horizon = max(cap.horizon_ms() for cap in caps)
    keep = max(cap.max for cap in caps)
    recent = [s for s in sent if s > now - horizon]
    return recent[-keep:]


# ---- quiet hours --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time  # local wall-clock time the quiet window opens ...
    end: time  # ... and closes; a start after the end crosses midnight


def quiet_until(quiet: QuietHours, now: int, tz: ZoneInfo) -> int | None:
    """When the quiet window holding ``now`` ends (epoch ms), or None outside it."""
    start, end = quiet.start, quiet.end
    if start == end:
        return None
    local = _local(now, tz)
    clock = local.time().replace(tzinfo=None)
    today = local.date()
    if start < end:
        if not start <= clock < end:
            return None
        until = _epoch_ms(today, end, tz)
    elif clock >= start:
        until = _epoch_ms(today + timedelta(days=1), end, tz)
    elif clock < end:
        until = _epoch_ms(today, end, tz)
    else:
        return None
    return until if until > now else None


def parse_clock(text: str) -> time:
    """``HH:MM`` or ``HH:MM:SS`` (24-hour) as a time of day."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise ValueError(f"expected a time of day like 21:00 or 21:00:30, got {text!r}")
    hour, minute, second = (int(p) for p in [*parts, "00"][:3])
    try:
        return time(hour, minute, second)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day (hours 00-23, minutes 00-59)") from None
