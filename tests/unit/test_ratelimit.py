"""Token buckets, shares across workers, the warm-up calendar and retry backoff."""

from __future__ import annotations

from datetime import date

import pytest

from mailstream.delivery.pacing import (
    DOMAIN_WAIT,
    GO,
    RATE_WAIT,
    WARMUP_CAP,
    Pacer,
    TokenBucket,
    retry_delay,
    share,
    warmup_cap,
)


@pytest.mark.parametrize(
    ("total", "owned", "partitions", "expected"),
    [
        (50.0, 4, 4, 50.0),  # one worker owns everything
        (50.0, 2, 4, 25.0),  # two workers: half each
        (50.0, 1, 4, 12.5),
        (50.0, 3, 4, 37.5),  # uneven split: in proportion
        (50.0, 0, 4, 0.0),  # owns nothing: sends nothing
        (50.0, 5, 4, 50.0),  # never more than the whole
        (50.0, 1, 0, 0.0),
    ],
)
def test_share_is_in_proportion_to_owned_partitions(
    total: float, owned: int, partitions: int, expected: float
) -> None:
    assert share(total, owned, partitions) == expected


def test_the_shares_of_all_workers_add_up_to_the_total() -> None:
    owned = [1, 1, 2]  # three workers over four partitions
    assert sum(share(50.0, n, 4) for n in owned) == 50.0


def test_a_bucket_starts_full_and_allows_the_burst_at_once() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == pytest.approx(0.1)  # one token takes 1/rate seconds


@pytest.mark.parametrize(
    ("elapsed", "allowed"),
    [(0.0, 0), (0.05, 0), (0.1, 1), (0.25, 2), (1.0, 5), (60.0, 5)],  # never above the burst
)
def test_a_drained_bucket_refills_at_the_rate(elapsed: float, allowed: int) -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    for _ in range(5):
        bucket.take(0.0)
    taken = 0
    while bucket.take(elapsed) == 0.0:
        taken += 1
    assert taken == allowed


def test_sends_over_a_long_run_follow_the_rate() -> None:
    bucket = TokenBucket(rate=50.0, burst=10.0)
    sent, now = 0, 0.0
    while now < 20.0:
        wait = bucket.take(now)
        if wait == 0.0:
            sent += 1
        else:
            now += wait
    assert sent == pytest.approx(50 * 20 + 10, abs=2)  # the rate, plus the first burst


def test_any_one_second_window_sees_at_most_rate_plus_burst() -> None:
    bucket = TokenBucket(rate=25.0, burst=5.0)
    times: list[float] = []
    now = 0.0
    while now < 10.0:
        wait = bucket.take(now)
        if wait == 0.0:
            times.append(now)
        else:
            now += wait
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 1.0)
        assert in_window <= 25 + 5


def test_resizing_after_a_rebalance_keeps_no_more_than_the_new_burst() -> None:
    bucket = TokenBucket(rate=50.0, burst=50.0)
    bucket.take(0.0)
    bucket.resize(25.0, 10.0, 0.0)
    assert sum(1 for _ in range(40) if bucket.take(0.0) == 0.0) == 10
    assert bucket.take(0.0) == pytest.approx(1 / 25)


def test_a_bucket_with_no_rate_never_refills() -> None:
    bucket = TokenBucket(rate=0.0, burst=0.0)
    assert bucket.take(0.0) == float("inf")


START = date(2026, 11, 1)


@pytest.mark.parametrize(
    ("today", "cap"),
    [
        (date(2026, 10, 30), 500),  # before the start: the first day's cap
        (START, 500),
        (date(2026, 11, 2), 1000),
        (date(2026, 11, 3), 2000),
        (date(2026, 11, 4), None),  # the schedule is over: the provider limit applies
        (date(2027, 1, 1), None),
    ],
)
def test_warmup_calendar(today: date, cap: int | None) -> None:
    assert warmup_cap([500, 1000, 2000], START, today) == cap


def test_no_warmup_schedule_means_no_cap() -> None:
    assert warmup_cap([], START, START) is None


@pytest.mark.parametrize(
    ("attempt", "jitter", "retry_after", "expected"),
    [
        (1, 0.0, None, 1.0),  # base 2 s: half fixed, half jittered
        (1, 0.999, None, 1.999),
        (2, 0.0, None, 2.0),
        (3, 0.5, None, 6.0),  # step 8 s: 4 + 4 * 0.5
        (10, 0.0, None, 30.0),  # capped at max_delay 60 s: 30 + 30 * jitter
        (10, 1.0, None, 60.0),
        (1, 0.0, 7.0, 7.0),  # Retry-After is a floor
        (3, 0.5, 1.0, 6.0),  # ... that only raises the delay
        (10, 0.0, 300.0, 300.0),  # even above max_delay
    ],
)
def test_retry_delay(
    attempt: int, jitter: float, retry_after: float | None, expected: float
) -> None:
    assert retry_delay(attempt, 2.0, 60.0, jitter, retry_after) == pytest.approx(expected)


def test_retry_delays_grow_until_the_cap() -> None:
    delays = [retry_delay(a, 1.0, 30.0, 0.0) for a in range(1, 9)]
    assert delays == sorted(delays)
    assert delays[-1] == 15.0


# ---- the pacer: provider share, domain limits, warm-up -------------------------------

TODAY = date(2026, 11, 2)


def drain(pacer: Pacer, domain: str, now: float, sent_today: int = 0) -> list[str]:
    """Verdicts for sends to ``domain`` at ``now`` until one is not GO."""
    verdicts = []
    while True:
        verdict = pacer.admit(domain, now, TODAY, sent_today + len(verdicts)).verdict
        verdicts.append(verdict)
        if verdict != GO or len(verdicts) > 1000:
            return verdicts


def test_the_pacer_allows_its_share_of_the_burst() -> None:
    pacer = Pacer(rate=50.0, burst=20.0)
    pacer.resize(owned=2, partitions=4, now=0.0)
    verdicts = drain(pacer, "example.com", 0.0)
    assert verdicts.count(GO) == 10 and verdicts[-1] == RATE_WAIT


def test_calls_chosen_at_the_limit_but_started_late_and_bunched_are_spread_again() -> None:
    # 10/s, burst 1: sends chosen at 0.0, 0.1, 0.2 and 0.3 whose calls could only
    # start at 0.25, 0.26, 0.27, 0.3 (each behind a flush of its own length)
    pacer = Pacer(rate=10.0, burst=1.0)
    for chosen in (0.0, 0.1, 0.2, 0.3):
        assert pacer.admit("example.com", chosen, TODAY, 0).verdict == GO
    started = []
    for ready in (0.25, 0.26, 0.27, 0.3):
        now = ready
        while (wait := pacer.start(now)) > 0:
            now += wait
        started.append(round(now, 3))
    assert started == [0.25, 0.35, 0.45, 0.55]  # one per 0.1 s where the provider sees them
    # resized with the rest: half the partitions, half the pace
    pacer.resize(owned=2, partitions=4, now=0.55)
    assert pacer.start(0.6) > 0 and pacer.start(0.75) == 0


def test_a_busy_domain_waits_while_other_domains_go() -> None:
    pacer = Pacer(rate=100.0, burst=100.0, domain_rates={"Gmail.com": 5.0})
    verdicts = drain(pacer, "gmail.com", 0.0)
    assert verdicts.count(GO) == 5 and verdicts[-1] == DOMAIN_WAIT
    assert pacer.admit("example.com", 0.0, TODAY, 5).verdict == GO
    assert pacer.admit("gmail.com", 0.2, TODAY, 6).verdict == GO  # 5/s: one token per 0.2 s


def test_a_domain_token_is_given_back_when_the_provider_limit_stops_the_send() -> None:
    pacer = Pacer(rate=1.0, burst=1.0, domain_rates={"gmail.com": 2.0})
    assert pacer.admit("example.com", 0.0, TODAY, 0).verdict == GO  # the provider token
    assert pacer.admit("gmail.com", 0.0, TODAY, 1).verdict == RATE_WAIT
    assert pacer.domains["gmail.com"].tokens == 2.0


@pytest.mark.parametrize(
    ("owned", "sent_today", "verdict"),
    [
        (4, 999, GO),  # day 2 of the schedule: 1,000 for the whole deployment
        (4, 1000, WARMUP_CAP),
        (2, 499, GO),  # half the partitions: half the cap
        (2, 500, WARMUP_CAP),
    ],
)
def test_the_warmup_cap_is_split_like_the_rate(owned: int, sent_today: int, verdict: str) -> None:
    pacer = Pacer(rate=1e6, burst=1e6, warmup_caps=[500, 1000, 2000], warmup_start=START)
    pacer.resize(owned, 4, 0.0)
    assert pacer.admit("example.com", 0.0, TODAY, sent_today).verdict == verdict


def test_after_the_warmup_only_the_rate_limits() -> None:
    pacer = Pacer(rate=1e6, burst=1e6, warmup_caps=[500], warmup_start=START)
    assert pacer.admit("example.com", 0.0, TODAY, 10_000).verdict == GO
