"""Window math with a fake clock: sampling, throttling, frequency caps, quiet hours."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from mailstream.core.windows import (
    Cap,
    QuietHours,
    SamplingRule,
    ThrottleRule,
    cap_free_at,
    caps_free_at,
    parse_clock,
    prune_sent,
    quiet_until,
    sample,
    sampled_in,
    significant_change,
    throttle,
    zone,
)

S = 1000
MIN = 60 * S
H = 60 * MIN
DAY = 24 * H
T0 = 1_700_000_000_000
UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def at(text: str, tz: ZoneInfo = UTC_ZONE) -> int:
    """Epoch ms of a local wall-clock time, e.g. at("2026-03-29 01:30", PARIS)."""
    local = datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz)
    return int(local.timestamp() * 1000)


def local(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M")


# ---- sampling ------------------------------------------------------------------------


def test_sampling_is_decided_by_event_id_alone() -> None:
    ids = [f"evt-{i}" for i in range(2000)]
    first = [sampled_in(i, 0.3) for i in ids]
    assert first == [sampled_in(i, 0.3) for i in ids]  # a replay decides the same way
    assert 0.25 < sum(first) / len(ids) < 0.35


@pytest.mark.parametrize(("rate", "expected"), [(1.0, True), (0.0, False)])
def test_sampling_edges_keep_all_or_none(rate: float, expected: bool) -> None:
    assert all(sampled_in(f"evt-{i}", rate) is expected for i in range(200))


def test_a_lower_rate_keeps_a_subset_of_a_higher_one() -> None:
    ids = [f"evt-{i}" for i in range(1000)]
    low = {i for i in ids if sampled_in(i, 0.1)}
    high = {i for i in ids if sampled_in(i, 0.5)}
    assert low <= high


INTERVAL = SamplingRule(min_interval_ms=10 * S)


@pytest.mark.parametrize(
    ("last", "when", "kept"),
    [
        (None, T0, True),  # first event of the type
        ([T0], T0 + 9_999, False),  # inside the interval
        ([T0], T0 + 10 * S, True),  # exactly the interval later
        ([T0], T0 + 60 * S, True),
        ([T0], T0 - 5 * S, False),  # an older event arriving late is inside the interval too
    ],
)
def test_min_interval(last: list[int] | None, when: int, kept: bool) -> None:
    result = sample(INTERVAL, last, "evt", when, {})
    assert (result is not None) is kept
    if kept:
        assert result == [when]


@pytest.mark.parametrize(
    ("previous", "current", "threshold", "changed"),
    [
        (10, 10, 0, False),
        (10, 10.5, 0, True),  # threshold 0: any difference
        (10, 10.5, 1, False),
        (10, 11, 1, True),  # exactly the threshold
        (10, 9, 1, True),  # either direction
        ("/home", "/home", 0, False),
        ("/home", "/cart", 5, True),  # non-numbers: any change, threshold ignored
        (True, 1, 0, True),  # a bool is not a number
        ([1, 2], [1, 2], 0, False),
        ({"a": 1}, {"a": 2}, 0, True),
    ],
)
def test_significant_change(
    previous: object, current: object, threshold: float, changed: bool
) -> None:
    assert significant_change(previous, current, threshold) is changed


WATCH_PRICE = SamplingRule(rate=0.0, min_interval_ms=60 * S, watch=("item", "price"), threshold=5)


@pytest.mark.parametrize(
    ("last", "payload", "kept"),
    [
        (None, {"item": {"price": 100}}, True),  # first value seen is a change
        ([T0, 100], {"item": {"price": 104}}, False),  # too small, and rate 0 drops it
        ([T0, 100], {"item": {"price": 105}}, True),  # significant: kept despite rate 0
        ([T0, 100], {"item": {"price": 90}}, True),
        ([T0, 100], {"item": {}}, False),  # field absent: no change, rules apply
        ([T0, 100], {}, False),
        ([T0], {"item": {"price": 1}}, True),  # last kept event had no value
    ],
)
def test_significant_change_overrides_rate_and_interval(
    last: list[object] | None, payload: dict[str, object], kept: bool
) -> None:
    result = sample(WATCH_PRICE, last, "evt", T0 + 1000, payload)
    assert (result is not None) is kept


def test_kept_event_remembers_its_watched_value() -> None:
    rule = SamplingRule(watch=("url",))
    assert sample(rule, None, "e1", T0, {"url": "/a"}) == [T0, "/a"]
    assert sample(rule, [T0, "/a"], "e2", T0 + 1, {}) == [T0 + 1]


# ---- throttling ----------------------------------------------------------------------

THREE_PER_MINUTE = ThrottleRule(limit=3, per_ms=MIN)


@pytest.mark.parametrize(
    ("stamps", "when", "expected"),
    [
        ([], T0, [T0]),
        ([T0, T0 + 1, T0 + 2], T0 + 3, None),  # full
        ([T0, T0 + 1, T0 + 2], T0 + MIN - 1, None),  # the first is still inside
        ([T0, T0 + 1, T0 + 2], T0 + MIN, [T0 + 1, T0 + 2, T0 + MIN]),  # it just left
        ([T0, T0 + 1], T0 + 10 * MIN, [T0 + 10 * MIN]),  # old stamps are forgotten
    ],
)
def test_throttle_sliding_window_edges(
    stamps: list[int], when: int, expected: list[int] | None
) -> None:
    assert throttle(THREE_PER_MINUTE, stamps, when) == expected


def test_throttle_state_never_exceeds_the_limit() -> None:
    window: list[int] = []
    allowed = 0
    for i in range(10_000):
        result = throttle(THREE_PER_MINUTE, window, T0 + i * 10)  # 100 events/s for 100 s
        if result is not None:
            window = result
            allowed += 1
        assert len(window) <= 3
    # 3 at 0 ms, 10 ms, 20 ms; each leaves the window exactly a minute later: 3 more
    assert allowed == 6


# ---- frequency caps ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "sent", "now", "free"),
    [
        (Cap(1, per_ms=DAY), [], T0, T0),
        (Cap(1, per_ms=DAY), [T0 - DAY + 1], T0, T0 + 1),  # the send leaves the window
        (Cap(1, per_ms=DAY), [T0 - DAY], T0, T0),  # exactly a day ago: outside
        (Cap(3, per_ms=7 * DAY), [T0 - 3 * DAY, T0 - 2 * DAY], T0, T0),
        (Cap(3, per_ms=7 * DAY), [T0 - 6 * DAY, T0 - 3 * DAY, T0 - H], T0, T0 + DAY),
        (Cap(2, per_ms=H), [T0 - 50 * MIN, T0 - 40 * MIN, T0 - 30 * MIN], T0, T0 + 20 * MIN),
    ],
)
def test_sliding_caps(cap: Cap, sent: list[int], now: int, free: int) -> None:
    assert cap_free_at(cap, sent, now, UTC_ZONE) == free


@pytest.mark.parametrize(
    ("tz", "sent", "now", "free"),
    [
        # Paris, winter (UTC+1): sent 23:30 yesterday, so today is free
        (PARIS, ["2026-01-14 23:30"], "2026-01-15 00:10", "2026-01-15 00:10"),
        # sent today at 00:05: next send at local midnight
        (PARIS, ["2026-01-15 00:05"], "2026-01-15 22:00", "2026-01-16 00:00"),
        # the same instants in UTC fall on other days: it is the user's calendar that counts
        (NEW_YORK, ["2026-01-15 18:00"], "2026-01-15 23:59", "2026-01-16 00:00"),
        # across DST (Paris springs forward 2026-03-29 02:00 -> 03:00): a 23 h day
        (PARIS, ["2026-03-29 00:30"], "2026-03-29 12:00", "2026-03-30 00:00"),
        # and falls back 2026-10-25 03:00 -> 02:00: a 25 h day
        (PARIS, ["2026-10-25 01:00"], "2026-10-25 23:30", "2026-10-26 00:00"),
    ],
)
def test_calendar_day_cap_in_the_users_time_zone(
    tz: ZoneInfo, sent: list[str], now: str, free: str
) -> None:
    cap = Cap(1, calendar="day")
    result = cap_free_at(cap, [at(s, tz) for s in sent], at(now, tz), tz)
    assert local(result, tz) == free


def test_calendar_day_across_dst_is_23_and_25_hours() -> None:
    cap = Cap(1, calendar="day")
    spring = cap_free_at(cap, [at("2026-03-29 00:30", PARIS)], at("2026-03-29 00:40", PARIS), PARIS)
    assert spring - at("2026-03-29 00:00", PARIS) == 23 * H
    autumn = cap_free_at(cap, [at("2026-10-25 00:30", PARIS)], at("2026-10-25 00:40", PARIS), PARIS)
    assert autumn - at("2026-10-25 00:00", PARIS) == 25 * H


@pytest.mark.parametrize(
    ("sent", "now", "free"),
    [
        # 2026-01-12 is a Monday
        (["2026-01-12 09:00", "2026-01-13 09:00"], "2026-01-14 09:00", "2026-01-14 09:00"),
        (
            ["2026-01-12 09:00", "2026-01-13 09:00", "2026-01-14 09:00"],
            "2026-01-18 23:00",  # Sunday night: still this week
            "2026-01-19 00:00",
        ),
        # last week's sends do not count
        (
            ["2026-01-09 09:00", "2026-01-10 09:00", "2026-01-11 23:59"],
            "2026-01-12 00:01",
            "2026-01-12 00:01",
        ),
    ],
)
def test_calendar_week_cap(sent: list[str], now: str, free: str) -> None:
    cap = Cap(3, calendar="week")
    result = cap_free_at(cap, [at(s, PARIS) for s in sent], at(now, PARIS), PARIS)
    assert local(result, PARIS) == free


def test_several_caps_wait_for_the_latest() -> None:
    caps = (Cap(1, calendar="day"), Cap(3, per_ms=7 * DAY))
    sent = [at(s) for s in ("2026-01-10 12:00", "2026-01-12 12:00", "2026-01-13 12:00")]
    now = at("2026-01-14 10:00")
    # the day cap allows now, but the week cap waits until the 10th's send is 7 days old
    assert caps_free_at(caps, sent, now, UTC_ZONE) == at("2026-01-17 12:00")
    assert caps_free_at((), sent, now, UTC_ZONE) == now


def test_pruned_send_history_is_bounded_by_the_caps() -> None:
    caps = (Cap(1, calendar="day"), Cap(3, per_ms=7 * DAY))
    sent = [T0 - i * H for i in range(500, -1, -1)]
    kept = prune_sent(caps, sent, T0)
    assert kept == [T0 - 2 * H, T0 - H, T0]
    assert prune_sent((), sent, T0) == []


# ---- quiet hours ---------------------------------------------------------------------

NIGHT = QuietHours(parse_clock("21:00"), parse_clock("08:00"))
SIESTA = QuietHours(parse_clock("13:00"), parse_clock("15:30"))


@pytest.mark.parametrize(
    ("quiet", "now", "until"),
    [
        (NIGHT, "2026-01-15 20:59", None),
        (NIGHT, "2026-01-15 21:00", "2026-01-16 08:00"),  # opens: until tomorrow morning
        (NIGHT, "2026-01-15 23:59", "2026-01-16 08:00"),
        (NIGHT, "2026-01-16 00:00", "2026-01-16 08:00"),  # after midnight: until this morning
        (NIGHT, "2026-01-16 07:59", "2026-01-16 08:00"),
        (NIGHT, "2026-01-16 08:00", None),  # closed
        (SIESTA, "2026-01-15 12:59", None),
        (SIESTA, "2026-01-15 13:00", "2026-01-15 15:30"),
        (SIESTA, "2026-01-15 15:30", None),
    ],
)
def test_quiet_windows(quiet: QuietHours, now: str, until: str | None) -> None:
    result = quiet_until(quiet, at(now, PARIS), PARIS)
    assert (None if result is None else local(result, PARIS)) == until


def test_quiet_window_ending_on_a_dst_night() -> None:
    # 21:30 on the 28th to 08:00 on the 29th of March in Paris: the clocks skip an hour
    until = quiet_until(NIGHT, at("2026-03-28 21:30", PARIS), PARIS)
    assert until is not None
    assert until - at("2026-03-28 21:30", PARIS) == 9 * H + 30 * MIN
    assert local(until, PARIS) == "2026-03-29 08:00"


def test_a_window_ending_inside_the_skipped_hour_ends_after_it() -> None:
    quiet = QuietHours(parse_clock("01:00"), parse_clock("02:30"))
    until = quiet_until(quiet, at("2026-03-29 01:15", PARIS), PARIS)
    assert until is not None and until > at("2026-03-29 01:15", PARIS)
    assert local(until, PARIS) == "2026-03-29 03:30"


def test_an_empty_window_is_never_quiet() -> None:
    quiet = QuietHours(parse_clock("08:00"), parse_clock("08:00"))
    assert quiet_until(quiet, at("2026-01-15 08:00"), UTC_ZONE) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Europe/Paris", PARIS),
        ("Atlantis/Capital", UTC_ZONE),
        (None, UTC_ZONE),
        (42, UTC_ZONE),
        ("", UTC_ZONE),
    ],
)
def test_zone_falls_back_to_the_default(name: object, expected: ZoneInfo) -> None:
    assert zone(name, UTC_ZONE) == expected


@pytest.mark.parametrize("text", ["21", "9:00", "24:00", "21:60", "ab:cd", "21:00:00:00", ""])
def test_parse_clock_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_clock(text)
