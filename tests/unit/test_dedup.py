"""SeenIds: the per-user dedup window, bounded in time and in count, driven by a fake clock."""

from __future__ import annotations

import math

import pytest

from mailstream.core.dedup import SeenIds

T0 = 1_700_000_000  # seconds
HOUR = 3600
NO_LIMIT = 10**9


def test_an_id_seen_again_within_the_window_is_a_duplicate() -> None:
    seen = SeenIds()

    assert seen.check_and_add("evt-1", T0) is False
    assert seen.check_and_add("evt-1", T0 + 10) is True
    assert len(seen) == 1


def test_different_ids_are_not_duplicates() -> None:
    seen = SeenIds()

    results = [seen.check_and_add(f"evt-{i}", T0) for i in range(100)]

    assert results == [False] * 100
    assert len(seen) == 100


def test_an_id_is_forgotten_after_the_window_and_can_be_seen_anew() -> None:
    seen = SeenIds()
    seen.check_and_add("evt-1", T0)
    later = T0 + HOUR + 1

    seen.prune(later, HOUR, NO_LIMIT)

    assert len(seen) == 0
    assert seen.check_and_add("evt-1", later) is False
    assert seen.check_and_add("evt-1", later + 1) is True


@pytest.mark.parametrize(
    ("age", "remembered"),
    [
        pytest.param(0, True, id="just-seen"),
        pytest.param(HOUR - 1, True, id="one-second-inside"),
        pytest.param(HOUR, True, id="exactly-at-the-window-edge"),
        pytest.param(HOUR + 1, False, id="one-second-past"),
        pytest.param(10 * HOUR, False, id="long-past"),
    ],
)
def test_prune_forgets_only_ids_older_than_the_window(age: int, remembered: bool) -> None:
    seen = SeenIds()
    seen.check_and_add("evt-1", T0)

    seen.prune(T0 + age, HOUR, NO_LIMIT)

    assert (len(seen) == 1) is remembered
    assert seen.check_and_add("evt-1", T0 + age) is remembered


def test_prune_keeps_the_young_ids_while_dropping_the_old() -> None:
    seen = SeenIds()
    for i, at in enumerate([T0, T0 + 1000, T0 + 2000, T0 + 3000, T0 + 4000]):
        seen.check_and_add(f"evt-{i}", at)

    seen.prune(T0 + 4500, HOUR, NO_LIMIT)  # cutoff T0 + 900

    assert len(seen) == 4
    assert seen.check_and_add("evt-1", T0 + 4500) is True
    assert seen.check_and_add("evt-0", T0 + 4500) is False


def test_a_fractional_window_is_honoured() -> None:
    seen = SeenIds()
    seen.check_and_add("evt-1", T0)

    seen.prune(T0 + 1, 0.5, NO_LIMIT)

    assert len(seen) == 0


def test_max_ids_evicts_the_oldest_first() -> None:
    seen = SeenIds()
    for i in range(5):
        seen.check_and_add(f"evt-{i}", T0 + i)

    seen.prune(T0 + 5, HOUR, max_ids=3)

    assert len(seen) == 3
    # The three newest are still duplicates; checked first so no re-add disturbs them.
    assert [seen.check_and_add(f"evt-{i}", T0 + 5) for i in (2, 3, 4)] == [True, True, True]
    assert [seen.check_and_add(f"evt-{i}", T0 + 5) for i in (0, 1)] == [False, False]


def test_max_ids_holds_even_when_every_id_is_inside_the_window() -> None:
    seen = SeenIds()
    for i in range(1000):
        seen.check_and_add(f"evt-{i}", T0)
        seen.prune(T0, HOUR, max_ids=16)
        assert len(seen) <= 16

    assert len(seen) == 16
    assert seen.check_and_add("evt-999", T0) is True
    assert seen.check_and_add("evt-983", T0) is False


def test_a_duplicate_does_not_refresh_the_time_an_id_was_first_seen() -> None:
    seen = SeenIds()
    seen.check_and_add("evt-1", T0)
    seen.check_and_add("evt-1", T0 + HOUR)  # a late duplicate

    seen.prune(T0 + HOUR + 1, HOUR, NO_LIMIT)

    assert len(seen) == 0


@pytest.mark.parametrize(
    "ids_and_times",
    [
        pytest.param([], id="empty"),
        pytest.param([("evt-1", T0)], id="one"),
        pytest.param([(f"evt-{i}", T0 + 7 * i) for i in range(500)], id="many"),
        pytest.param([("ünïcødé:ïd/1", T0), ("", T0 + 1)], id="odd-ids"),
        pytest.param([("evt-max", 2**32 - 1)], id="largest-storable-second"),
    ],
)
def test_bytes_round_trip_keeps_membership_and_times(ids_and_times: list[tuple[str, int]]) -> None:
    seen = SeenIds()
    for event_id, at in ids_and_times:
        seen.check_and_add(event_id, at)

    data = seen.to_bytes()
    restored = SeenIds.from_bytes(data)
    from_view = SeenIds.from_bytes(memoryview(data))

    assert len(data) == 12 * len(ids_and_times)
    assert restored.to_bytes() == from_view.to_bytes() == data
    assert len(restored) == len(ids_and_times)
    for event_id, at in ids_and_times:
        assert restored.check_and_add(event_id, at) is True


def test_times_survive_the_round_trip_so_pruning_still_works() -> None:
    seen = SeenIds()
    seen.check_and_add("old", T0)
    seen.check_and_add("new", T0 + 2 * HOUR)

    restored = SeenIds.from_bytes(seen.to_bytes())
    restored.prune(T0 + 2 * HOUR, HOUR, NO_LIMIT)

    assert len(restored) == 1
    assert restored.check_and_add("new", T0 + 2 * HOUR) is True
    assert restored.check_and_add("old", T0 + 2 * HOUR) is False


def test_memory_stays_bounded_over_days_of_traffic() -> None:
    count = 100_000
    span = 4 * 24 * HOUR  # four simulated days
    window = HOUR
    # Arrivals are evenly spread, so at most this many first-seen times fit in [now - window, now].
    bound = math.ceil((window + 1) * count / span) + 1
    seen = SeenIds()
    peak = 0

    for i in range(count):
        now = T0 + i * span // count
        seen.check_and_add(f"evt-{i}", now)
        seen.prune(now, window, NO_LIMIT)
        peak = max(peak, len(seen))

    assert peak <= bound
    # The window is full at the end, not emptied: the latest ids are still remembered.
    assert len(seen) >= bound - 2
    assert seen.check_and_add(f"evt-{count - 1}", now) is True
    assert seen.check_and_add("evt-0", now) is False


@pytest.mark.parametrize(
    ("decoded_first", "max_ids"),
    [
        pytest.param(False, NO_LIMIT, id="built-here"),
        pytest.param(True, NO_LIMIT, id="decoded-then-changed"),
        pytest.param(True, 4, id="decoded-then-capped"),
    ],
)
def test_the_stored_form_follows_every_change(decoded_first: bool, max_ids: int) -> None:
    seen = SeenIds()
    for i in range(6):
        seen.check_and_add(f"evt-{i}", T0 + 1000 * i)
    if decoded_first:
        seen = SeenIds.from_bytes(seen.to_bytes())

    seen.check_and_add("evt-new", T0 + 6000)
    seen.check_and_add("evt-5", T0 + 6000)  # a duplicate changes nothing
    seen.prune(T0 + 6000, 3.5 * 1000, max_ids)  # cutoff T0 + 2500

    survivors = [(f"evt-{i}", T0 + 1000 * i) for i in (3, 4, 5)] + [("evt-new", T0 + 6000)]
    expected = SeenIds()
    for event_id, at in survivors[-max_ids:]:
        expected.check_and_add(event_id, at)
    assert seen.to_bytes() == expected.to_bytes()
    assert SeenIds.from_bytes(seen.to_bytes()).check_and_add("evt-2", T0 + 6000) is False
