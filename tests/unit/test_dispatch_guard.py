"""What a dispatcher does after a round raised: the backoff, and when a command that keeps
failing is given up."""

from __future__ import annotations

import pytest

from mailstream.delivery.round_guard import AfterError, ErrorPolicy, ErrorTracker, backoff

POLICY = ErrorPolicy(give_up_after=3, backoff_base_s=0.2, backoff_max_s=5.0, suspects_kept=3)


@pytest.mark.parametrize(
    ("in_a_row", "expected"),
    [
        (0, 0.0),
        (1, 0.2),
        (2, 0.4),
        (3, 0.8),
        (5, 3.2),
        (6, 5.0),  # capped
        (10_000, 5.0),  # no overflow however long the spell
    ],
)
def test_backoff_doubles_up_to_the_cap(in_a_row: int, expected: float) -> None:
    assert backoff(in_a_row, POLICY) == pytest.approx(expected)


# A sequence of round outcomes: a suspect key (a command was in hand), None (a round
# failed with no command in hand, e.g. a flush), or "ok" (a round ran through).
Step = str | None


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # A flush that fails keeps failing: backoff grows, nothing is ever given up.
        ([None], AfterError(0.2, False, 0, 1)),
        ([None, None, None, None], AfterError(1.6, False, 0, 4)),
        # The same command three times: given up on the third.
        (["a"], AfterError(0.2, False, 1, 1)),
        (["a", "a"], AfterError(0.4, False, 2, 2)),
        (["a", "a", "a"], AfterError(0.8, True, 3, 3)),
        # Rounds that ran through in between reset the backoff, not the strikes: a poison
        # command that is reached only now and then is still given up.
        (["a", "ok", "a", "ok", "a"], AfterError(0.2, True, 3, 1)),
        # Other commands failing do not count against this one.
        (["a", "b", "a", "b"], AfterError(0.2 * 2**3, False, 2, 4)),
        (["a", None, "a", None, "a"], AfterError(3.2, True, 3, 5)),
        # Strikes are kept for a bounded number of commands, the oldest forgotten first.
        (["a", "a", "b", "c", "d", "a"], AfterError(5.0, False, 1, 6)),
        (["a", "a", "b", "c", "a"], AfterError(3.2, True, 3, 5)),
    ],
)
def test_a_command_is_given_up_after_failing_the_same_way_three_times(
    steps: list[Step], expected: AfterError
) -> None:
    tracker = ErrorTracker(POLICY)
    decision: AfterError | None = None
    for step in steps:
        if step == "ok":
            tracker.succeeded()
        else:
            decision = tracker.failed(step)
    assert decision == expected
    assert len(tracker.strikes) <= POLICY.suspects_kept


def test_a_command_given_up_starts_from_nothing_if_seen_again() -> None:
    tracker = ErrorTracker(POLICY)
    for _ in range(3):
        decision = tracker.failed("a")
    assert decision.give_up
    tracker.forget("a")
    assert tracker.failed("a") == AfterError(1.6, False, 1, 4)
    tracker.forget("never seen")  # harmless
