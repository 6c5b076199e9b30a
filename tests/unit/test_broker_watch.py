"""The broker watch's core: when the worker counts the broker as away or lost, and when
its local state is ahead of what the broker holds."""

from __future__ import annotations

import logging

import pytest

from mailstream.kafka.broker_watch import (
    BrokerContact,
    ahead_of_broker,
    consistency_error_where,
    data_lost_line,
    lost_line,
)

WALL = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def contact() -> BrokerContact:
    c = BrokerContact(stale_after=3.0, lost_after=60.0)
    c.answered(100.0, WALL)
    return c


@pytest.mark.parametrize(
    ("seconds_after", "reachable", "lost"),
    [(0.0, True, False), (3.0, True, False), (3.5, False, False), (60.0, False, True)],
)
def test_silence_makes_the_broker_unreachable_then_lost(
    seconds_after: float, reachable: bool, lost: bool
) -> None:
    c = contact()
    assert c.reachable(100.0 + seconds_after) is reachable
    assert c.lost(100.0 + seconds_after) is lost


def test_before_the_watch_starts_nothing_says_the_broker_is_away() -> None:
    c = BrokerContact()
    assert c.reachable(1e9) and not c.lost(1e9) and c.status(1e9) == "ok"


def test_status_says_since_when_and_an_answer_after_a_silence_is_a_comeback() -> None:
    c = contact()
    assert c.status(101.0) == "ok"
    assert c.status(110.0) == "unreachable since 2027-01-15T08:00:00Z"
    c.answered(101.0, WALL + 1)
    assert not c.came_back
    c.answered(120.0, WALL + 20)
    assert c.came_back and c.status(120.5) == "ok"


def test_one_unanswered_question_is_enough_to_look_again_at_the_broker_data() -> None:
    c = contact()
    c.missed()  # a broker restarted within a second
    c.answered(101.0, WALL + 1)
    assert c.came_back
    c.came_back = False
    c.answered(102.0, WALL + 2)
    assert not c.came_back


def test_the_lost_line_names_the_servers_the_time_and_the_setting() -> None:
    line = lost_line("10.0.0.5:9092,10.0.0.6:9092", contact(), 175.0)
    assert "10.0.0.5:9092,10.0.0.6:9092 has not answered for 75 s" in line
    assert "since 2027-01-15T08:00:00Z" in line and "broker.lost_after is 60 s" in line


@pytest.mark.parametrize(
    ("persisted", "ends", "behind"),
    [
        # Faust keeps the offset of the last record applied: end 13 holds offset 12.
        ({("c", 0): 12}, {("c", 0): 13}, []),
        ({("c", 0): 12}, {("c", 0): 12}, [(("c", 0), 12, 12)]),
        ({("c", 0): 12}, {("c", 0): 0}, [(("c", 0), 12, 0)]),
        ({("c", 0): 12}, {("c", 0): None}, [(("c", 0), 12, None)]),
        ({("c", 0): 12}, {}, [(("c", 0), 12, None)]),
        ({("c", 1): 4, ("c", 0): 9}, {("c", 0): 3, ("c", 1): 5}, [(("c", 0), 9, 3)]),
        ({}, {("c", 0): 0}, []),
    ],
)
def test_a_partition_is_behind_when_its_end_is_not_past_the_local_offset(
    persisted: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int | None],
    behind: list[tuple[tuple[str, int], int, int | None]],
) -> None:
    assert ahead_of_broker(persisted, ends) == behind


def test_the_data_lost_line_says_what_and_what_to_do() -> None:
    behind = ahead_of_broker({("ms-users-changelog", 2): 40, ("ms-users-changelog", 3): 8}, {})
    line = data_lost_line("127.0.0.1:9092", "/srv/data", behind)
    assert "\n" not in line
    assert "127.0.0.1:9092 lost its data (ms-users-changelog is gone; 2 changelog" in line
    assert "Remove /srv/data" in line and "restore the broker's data" in line
    one = data_lost_line("b:9092", "d", [(("ms-users-changelog", 1), 16, 0)])
    assert "ms-users-changelog[1] ends at offset 0, the local copy has offset 16" in one


def test_faust_consistency_error_is_said_the_same_way() -> None:
    message = (
        "The persisted offset for changelog topic partition TP(topic='ms-users-changelog',"
        " partition=1) is higher\nthan the last offset in that topic (highwater) (16 > -1)."
        "\n\nMost likely you have removed data from the topics without\nremoving the"
        " RocksDB database file for this partition.\n"
    )
    assert consistency_error_where(message) == (
        "ms-users-changelog[1] ends at offset 0, the local copy has offset 16"
    )
    assert consistency_error_where("something else\n\nmore") == "something else"


def test_faust_traceback_for_a_consistency_error_is_left_out_and_nothing_else() -> None:
    from faust.exceptions import ConsistencyError

    from mailstream.kafka.broker_watch import DataLostTraceback

    def record(msg: str, args: tuple[object, ...], exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord("faust", logging.ERROR, __file__, 1, msg, args, info)

    lost = ConsistencyError("The persisted offset ... (16 > -1)")
    keep = DataLostTraceback()
    assert not keep.filter(record("Crashed reason=%r", (lost,), lost))
    assert not keep.filter(record("Crashed reason=%r", (lost,), None))
    other = RuntimeError("boom")
    assert keep.filter(record("Crashed reason=%r", (other,), other))
    assert keep.filter(record("plain", (), None))
