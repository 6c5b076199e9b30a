"""A worker paused past its group session is told so the first time it looks."""

from __future__ import annotations

from mailstream.kafka.membership import EXIT_PAUSED, Membership


def _membership(lapses: list[str]) -> Membership:
    return Membership.for_session(10.0, 3.0, lapses.append)


def test_ticks_closer_than_the_session_allows_are_no_pause() -> None:
    lapses: list[str] = []
    m = _membership(lapses)
    for now in (0.0, 0.1, 5.0, 11.9, 18.9):  # gaps up to 7 s: session 10 s less 3 s
        m.tick(now)
        m.check(now + 0.05)
    assert lapses == []


def test_a_pause_longer_than_the_session_less_a_heartbeat_is_seen_once() -> None:
    lapses: list[str] = []
    m = _membership(lapses)
    m.tick(100.0)
    m.check(107.5)  # whoever looks first after the pause (the loop, or the tick thread)
    m.tick(107.6)
    m.check(107.7)
    assert len(lapses) == 1
    assert "did not run for 7.5 s" in lapses[0] and f"Exiting ({EXIT_PAUSED})" in lapses[0]


def test_nothing_is_a_pause_before_the_first_tick() -> None:
    lapses: list[str] = []
    m = _membership(lapses)
    m.check(1e6)
    assert lapses == []


def test_a_short_session_still_allows_a_second() -> None:
    lapses: list[str] = []
    m = Membership.for_session(1.5, 1.0, lapses.append)
    m.tick(0.0)
    m.check(0.9)
    assert lapses == []
    m.check(1.1)
    assert len(lapses) == 1
