"""What the retention sweep may delete given the records and the time, how far one run
reads, and the config that refuses a retention shorter than the dedup window."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest

from mailstream.config.load import parse_config
from mailstream.delivery.retention import (
    FINAL_RECORD,
    SENT_COUNTER,
    PrunePlan,
    counter_day,
    finished_before,
    plan_prune,
)
from mailstream.delivery.state_machine import (
    ATTEMPTING,
    DEAD_LETTERED,
    DROPPED,
    FAILED,
    QUEUED,
    SENT,
    UNKNOWN,
    Delivery,
    QueueKey,
)
from mailstream.exceptions import ConfigError
from mailstream.state.store import PROGRESS_KEY, progress_key

DAY_MS = 86_400_000
NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z
TODAY = "2027-01-15"
KEEP = 30 * DAY_MS


def record(state: str, age_ms: int, queued: bool = False) -> bytes:
    key = QueueKey(4, NOW, "s1").encode() if queued else None
    return Delivery(state, "marketing", "ada", "default", 1, NOW - age_ms, queue_key=key).encode()


def test_the_clock_is_where_the_tests_think() -> None:
    assert datetime.fromtimestamp(NOW / 1000, tz=UTC).date().isoformat() == TODAY


@pytest.mark.parametrize(
    ("state", "age_ms", "queued", "prunable"),
    [
        (SENT, KEEP + 1, False, True),
        (FAILED, KEEP + 1, False, True),
        (DROPPED, KEEP + 1, False, True),
        (UNKNOWN, KEEP + 1, False, True),
        (DEAD_LETTERED, KEEP + 1, False, True),
        (SENT, KEEP, False, False),  # exactly the retention: kept
        (SENT, KEEP - 1, False, False),
        (SENT, 0, False, False),
        # never a send that may still go out, however old
        (QUEUED, 10 * KEEP, True, False),
        (ATTEMPTING, 10 * KEEP, True, False),
        # a final state that still has a queue key is not what the agent writes: kept
        (SENT, 10 * KEEP, True, False),
    ],
)
def test_only_final_records_older_than_the_retention_go(
    state: str, age_ms: int, queued: bool, prunable: bool
) -> None:
    assert finished_before(record(state, age_ms, queued), NOW - KEEP) is prunable


@pytest.mark.parametrize("raw", [b"", b"not json", b"{}", b"[1, 2]", b'{"s": "sent"}'])
def test_a_record_that_does_not_decode_is_never_deleted(raw: bytes) -> None:
    assert finished_before(raw, NOW) is False


@pytest.mark.parametrize(
    ("key", "day"),
    [
        (b"\x00sent:2027-01-15", date(2027, 1, 15)),
        (b"\x00sent:2027-01-13\x1facme", date(2027, 1, 13)),
        (b"\x00sent:garbage", None),
        (b"\x00sent:\xff", None),
        (PROGRESS_KEY, None),
        (b"default\x1fs1", None),
    ],
)
def test_counter_day(key: bytes, day: date | None) -> None:
    assert counter_day(key) == day


OLD = record(SENT, KEEP + 1)
NEW = record(SENT, 1)


@pytest.mark.parametrize(
    ("records", "limit", "counters", "expected"),
    [
        pytest.param([], 10, True, PrunePlan([], b"", 0), id="empty"),
        pytest.param(
            [(b"d\x1fa", OLD), (b"d\x1fb", NEW), (b"d\x1fc", OLD)],
            10,
            False,
            PrunePlan([(b"d\x1fa", FINAL_RECORD), (b"d\x1fc", FINAL_RECORD)], b"", 3),
            id="old-final-records-go-new-ones-stay",
        ),
        pytest.param(
            [(b"d\x1fa", OLD), (b"d\x1fb", OLD), (b"d\x1fc", OLD), (b"d\x1fd", OLD)],
            2,
            False,
            PrunePlan([(b"d\x1fa", FINAL_RECORD), (b"d\x1fb", FINAL_RECORD)], b"d\x1fc", 2),
            id="bounded-work-resumes-at-the-next-key",
        ),
        pytest.param(
            [(b"d\x1fa", OLD), (b"d\x1fb", OLD)],
            2,
            False,
            PrunePlan([(b"d\x1fa", FINAL_RECORD), (b"d\x1fb", FINAL_RECORD)], b"", 2),
            id="exactly-the-limit-reaches-the-end-and-starts-over",
        ),
        pytest.param(
            [
                (b"\x00sent:2027-01-12", b"40"),
                (b"\x00sent:2027-01-13", b"40"),
                (b"\x00sent:2027-01-13\x1facme", b"7"),
                (b"\x00sent:2027-01-14", b"40"),
                (b"\x00sent:2027-01-15", b"40"),
                (b"\x00sent:2027-01-15\x1facme", b"3"),
            ],
            10,
            True,
            PrunePlan(
                [
                    (b"\x00sent:2027-01-12", SENT_COUNTER),
                    (b"\x00sent:2027-01-13", SENT_COUNTER),
                    (b"\x00sent:2027-01-13\x1facme", SENT_COUNTER),
                ],
                b"",
                6,
            ),
            id="counters-of-today-and-yesterday-stay",
        ),
        pytest.param(
            [(b"\x00sent:2020-01-01", b"1"), (progress_key("t.sends"), b"12")],
            10,
            False,
            PrunePlan([], b"", 2),
            id="webhook-calls-hold-no-counters-and-bookkeeping-stays",
        ),
        pytest.param(
            [(progress_key("t.sends"), b"12"), (b"\x00other", OLD)],
            10,
            True,
            PrunePlan([], b"", 2),
            id="other-zero-byte-keys-are-never-taken-for-records",
        ),
    ],
)
def test_plan_prune(
    records: list[tuple[bytes, bytes]], limit: int, counters: bool, expected: PrunePlan
) -> None:
    assert plan_prune(iter(records), NOW, KEEP, limit, counters) == expected


def test_a_run_reads_no_more_than_it_needs() -> None:
    taken: list[int] = []

    def records() -> Iterator[tuple[bytes, bytes]]:
        for i in range(1_000_000):
            taken.append(i)
            yield f"d\x1f{i:07}".encode(), OLD

    plan = plan_prune(records(), NOW, KEEP, 100)
    assert plan.read == 100 and len(plan.deletes) == 100
    assert len(taken) == 101  # the one peeked at is where the next run starts
    assert plan.resume == b"d\x1f0000100"


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        plan_prune(iter([]), NOW, KEEP, 0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"retention": {"deliveries": "12h"}},
            "retention.deliveries: 43200s is shorter than ingest.dedup_window (86400s)",
        ),
        (
            {"retention": {"webhook_calls": "1h"}},
            "retention.webhook_calls: 3600s is shorter than ingest.dedup_window",
        ),
        ({"retention": {"deliveries": 0}}, "retention.deliveries: Input should be greater"),
        ({"retention": {"deliveries": "soon"}}, "retention.deliveries: Value error, 'soon'"),
        ({"retention": {"sweep_every": "100ms"}}, "retention.sweep_every"),
        ({"retention": {"sweep_batch": 1}}, "retention.sweep_batch"),
        ({"retention": {"keep": "30d"}}, "retention.keep: unknown key"),
    ],
)
def test_a_bad_retention_fails_at_load_naming_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "mailstream.yaml", env={})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("raw", "deliveries_s", "webhook_calls_s"),
    [
        ({}, 30 * 86400.0, 30 * 86400.0),
        ({"retention": {"deliveries": "90d", "webhook_calls": "7d"}}, 90 * 86400.0, 7 * 86400.0),
        # the minimum moves with the dedup window
        (
            {"ingest": {"dedup_window": "2s"}, "retention": {"deliveries": "3s"}},
            3.0,
            30 * 86400.0,
        ),
        ({"retention": {"deliveries": "1d"}}, 86400.0, 30 * 86400.0),
    ],
)
def test_retention_values(
    raw: dict[str, object], deliveries_s: float, webhook_calls_s: float
) -> None:
    config = parse_config(raw, "mailstream.yaml", env={})
    assert config.retention.deliveries == deliveries_s
    assert config.retention.webhook_calls == webhook_calls_s
