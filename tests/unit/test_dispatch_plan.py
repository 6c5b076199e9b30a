"""The dispatchers' decisions on queue entries, orphaned attempts, daily quotas and the
day's send counts (mailstream.delivery.dispatch_plan), on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mailstream.core.tenants import Quota
from mailstream.delivery.dispatch_plan import (
    IN_FLIGHT,
    ORPHANED,
    QUOTA_DEFERRED,
    QUOTA_DROPPED,
    READY,
    STALE,
    CountWrite,
    SendDay,
    admission_answer,
    hold,
    resolve_orphan,
    triage,
)
from mailstream.delivery.fair_share import CHOSEN, LANE_DONE, SKIP, STOP, TENANT_WAIT
from mailstream.delivery.pacing import DOMAIN_WAIT, GO, RATE_WAIT, WARMUP_CAP
from mailstream.delivery.state_machine import (
    ATTEMPTING,
    DROPPED,
    QUEUED,
    SENT,
    UNKNOWN,
    Delivery,
    QueueKey,
    accept,
)


def ms(text: str) -> int:
    """A fake clock's reading: epoch ms of an ISO time, UTC."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


NOW = ms("2026-03-01T12:00:00")


def queued(category: str = "transactional", send_id: str = "s1") -> Delivery:
    command = {"send_id": send_id, "tenant_id": "acme", "user_id": "u1", "category": category}
    record = accept(None, command, NOW - 5000)
    assert record is not None
    return record


def in_state(state: str, category: str = "transactional") -> Delivery:
    record = queued(category)
    record.state = state
    return record


KEY = queued().queue_key
assert KEY is not None
OTHER_KEY = QueueKey(1, NOW, "s1", "acme", "acme").encode()


@pytest.mark.parametrize(
    ("stored", "raw", "in_flight", "verdict"),
    [
        (queued(), b"{}", True, IN_FLIGHT),  # being called by this worker
        (None, b"{}", False, STALE),  # no record: its deletion outran the queue's
        (queued(), None, False, STALE),  # the queue entry holds no command
        (in_state(SENT), b"{}", False, STALE),  # final: the entry was left by a crash
        (in_state(DROPPED), b"{}", False, STALE),
        (in_state(ATTEMPTING), b"{}", False, ORPHANED),  # its worker died mid-call
        (queued(), b"{}", False, READY),
    ],
)
def test_triage_says_what_a_queue_entry_is(
    stored: Delivery | None, raw: bytes | None, in_flight: bool, verdict: str
) -> None:
    entry = triage(KEY, stored.encode() if stored else None, raw, in_flight)
    assert entry.verdict == verdict
    if verdict in (ORPHANED, READY):
        assert entry.record is not None and entry.record.queue_key == KEY
        assert entry.raw == raw
    else:
        assert entry.record is None


def test_an_entry_under_another_key_than_its_record_says_is_stale() -> None:
    # a retry re-queued the send under a later key; the old entry was not deleted yet
    assert triage(OTHER_KEY, queued().encode(), b"{}", False).verdict == STALE


@pytest.mark.parametrize(
    ("category", "resend", "requeued", "state", "listed"),
    [
        ("transactional", None, True, QUEUED, False),  # never lost
        ("marketing", None, False, UNKNOWN, True),  # never sent twice: listed instead
        ("marketing", True, True, QUEUED, False),  # a webhook call: the receiver dedups
    ],
)
def test_an_orphaned_attempt_is_queued_again_or_given_up_as_unknown(
    category: str, resend: bool | None, requeued: bool, state: str, listed: bool
) -> None:
    record = in_state(ATTEMPTING, category)
    later = NOW + 60_000
    orphan = resolve_orphan(record, later, resend)
    assert orphan.requeued is requeued
    assert (record.state, record.updated) == (state, later)
    assert (record.queue_key is not None) is requeued
    if listed:
        assert orphan.dead_letter is not None
        assert orphan.dead_letter.code == "unknown_outcome"
        assert not orphan.dead_letter.attempts
        assert "whether it was delivered is unknown" in orphan.dead_letter.text
    else:
        assert orphan.dead_letter is None
        assert record.history[-1][:2] == [later, "unknown_outcome"]


@pytest.mark.parametrize(
    ("verdict", "answer"),
    [
        (GO, CHOSEN),
        (DOMAIN_WAIT, SKIP),  # other domains may go
        (TENANT_WAIT, LANE_DONE),  # other tenants may go
        (RATE_WAIT, STOP),  # nobody goes
        (WARMUP_CAP, STOP),
    ],
)
def test_the_pacers_verdict_tells_the_fair_scheduler_what_next(verdict: str, answer: str) -> None:
    assert admission_answer(verdict) == answer


def test_a_send_held_over_quota_waits_for_tomorrow_under_a_later_key() -> None:
    record = queued("marketing")
    tomorrow = ms("2026-03-02T00:00:00")
    held = hold(record, tomorrow, NOW)
    assert (held.result, held.action) == (QUOTA_DEFERRED, "deferred")
    assert held.requeue_key == record.queue_key
    assert held.requeue_key is not None
    assert QueueKey.decode(held.requeue_key).ready == tomorrow
    assert record.state == QUEUED
    assert record.history[-1][:2] == [NOW, "quota_deferred"]


def test_a_send_held_with_drop_is_never_sent() -> None:
    record = queued("marketing")
    held = hold(record, 0, NOW)
    assert (held.result, held.action, held.requeue_key) == (QUOTA_DROPPED, "dropped", None)
    assert (record.state, record.queue_key) == (DROPPED, None)


def stored_counts(counts: dict[tuple[int, str | None], int]) -> Any:
    """A reader of stored counters: (partition, lane) -> sends; records the days read."""
    days: list[str] = []

    def read(p: int, day: str, lane: str | None) -> int:
        days.append(day)
        return counts.get((p, lane), 0)

    read.days = days  # type: ignore[attr-defined]
    return read


def test_a_round_reads_the_counts_of_the_utc_day_of_its_clock() -> None:
    read = stored_counts({(0, None): 7, (1, None): 3, (0, "acme"): 5, (1, "beta"): 2})
    day = SendDay.start(ms("2026-03-01T23:59:59.999"), [0, 1], ["acme", "beta"], read)
    assert set(read.days) == {"2026-03-01"}
    assert day.sent() == 10
    assert (day.lane_sent("acme"), day.lane_sent("beta")) == (5, 2)
    assert day.tomorrow_ms == ms("2026-03-02T00:00:00")
    assert SendDay.start(ms("2026-03-02T00:00:00"), [0], [], read).day.isoformat() == "2026-03-02"


DEFER = Quota(sends_per_day=10)
DROP = Quota(sends_per_day=10, over_daily_quota="drop")


@pytest.mark.parametrize(
    ("klass", "quota", "fraction", "sent", "until"),
    [
        (0, DEFER, 1.0, 50, None),  # transactional mail is never held
        (1, Quota(), 1.0, 10**6, None),  # no quota
        (1, DEFER, 1.0, 9, None),  # under it
        (1, DEFER, 1.0, 10, "tomorrow"),
        (1, DROP, 1.0, 10, 0),
        (1, DEFER, 0.5, 5, "tomorrow"),  # this worker's half of the quota is used up
        (1, DEFER, 0.5, 4, None),
    ],
)
def test_marketing_over_its_tenants_sends_per_day_is_held(
    klass: int, quota: Quota, fraction: float, sent: int, until: int | str | None
) -> None:
    day = SendDay.start(NOW, [0], ["acme"], stored_counts({(0, "acme"): sent}))
    expected = day.tomorrow_ms if until == "tomorrow" else until
    assert day.hold_until(klass, "acme", quota, fraction) == expected


def test_the_sends_chosen_count_towards_the_quota_and_the_counters_written() -> None:
    read = stored_counts({(0, None): 8, (0, "acme"): 8, (1, None): 1})
    day = SendDay.start(NOW, [0, 1], ["acme", "beta"], read)
    day.choose("acme", "acme", 0)
    assert day.hold_until(1, "acme", DEFER, 1.0) is None
    day.choose("acme", "acme", 0)
    assert day.hold_until(1, "acme", DEFER, 1.0) == day.tomorrow_ms
    day.choose("beta", "beta", 1)
    assert day.sent() == 12
    assert sorted(day.writes(), key=repr) == sorted(
        [
            CountWrite(0, "2026-03-01", None, 10),
            CountWrite(0, "2026-03-01", "acme", 10),
            CountWrite(1, "2026-03-01", None, 2),
            CountWrite(1, "2026-03-01", "beta", 1),
        ],
        key=repr,
    )


def test_a_round_that_chooses_nothing_writes_no_counter() -> None:
    assert SendDay.start(NOW, [0, 1], ["acme"], stored_counts({(0, None): 4})).writes() == []
