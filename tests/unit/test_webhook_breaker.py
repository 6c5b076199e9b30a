"""The circuit breaker of a webhook URL, every transition, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from mailstream.webhooks_out.circuit_breaker import (
    CALL,
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBE,
    Breaker,
    BreakerSettings,
)

SETTINGS = BreakerSettings(failures=3, cool_down=10.0)

# Each step: (time, action, expected). Actions: "allow" expects the ticket (CALL, PROBE or
# None); "ok"/"fail" record a normal call's outcome, "probe_ok"/"probe_fail" the probe's,
# and expect the state entered (None: unchanged); "hold" expects hold_until.
Steps = list[tuple[float, str, Any]]

CASES: dict[str, tuple[Steps, str]] = {
    "closed lets calls through": ([(0, "allow", CALL), (0, "ok", None)], CLOSED),
    "fewer failures than the threshold keep it closed": (
        [(0, "fail", None), (1, "fail", None), (2, "allow", CALL)],
        CLOSED,
    ),
    "a success resets the consecutive count": (
        [(0, "fail", None), (1, "fail", None), (2, "ok", None), (3, "fail", None)],
        CLOSED,
    ),
    "N consecutive failures open it": (
        [(0, "fail", None), (1, "fail", None), (2, "fail", OPEN)],
        OPEN,
    ),
    "open: calls held until the cool-down ends": (
        [
            *[(t, "fail", None) for t in (0, 1)],
            (2, "fail", OPEN),
            (2, "allow", None),
            (2, "hold", 12.0),
            (11.999, "allow", None),
        ],
        OPEN,
    ),
    "open ignores late outcomes of calls made before it opened": (
        [*[(t, "fail", None) for t in (0, 1)], (2, "fail", OPEN), (3, "ok", None)],
        OPEN,
    ),
    "after the cool-down: half-open, one probe, the rest held": (
        [
            *[(t, "fail", None) for t in (0, 1)],
            (2, "fail", OPEN),
            (12, "allow", PROBE),
            (12, "allow", None),
            (13, "allow", None),
            (13, "hold", None),
        ],
        HALF_OPEN,
    ),
    "the probe succeeds: closed": (
        [
            *[(t, "fail", None) for t in (0, 1)],
            (2, "fail", OPEN),
            (12, "allow", PROBE),
            (12.5, "probe_ok", CLOSED),
            (12.5, "allow", CALL),
        ],
        CLOSED,
    ),
    "the probe fails: open again, for a new cool-down": (
        [
            *[(t, "fail", None) for t in (0, 1)],
            (2, "fail", OPEN),
            (12, "allow", PROBE),
            (13, "probe_fail", OPEN),
            (13, "hold", 23.0),
            (22, "allow", None),
            (23, "allow", PROBE),
        ],
        HALF_OPEN,
    ),
    "half-open ignores normal calls' outcomes, only the probe decides": (
        [
            *[(t, "fail", None) for t in (0, 1)],
            (2, "fail", OPEN),
            (12, "allow", PROBE),
            (12, "ok", None),
            (12, "fail", None),
        ],
        HALF_OPEN,
    ),
    "closed again after a probe: the count starts over": (
        [
            *[(t, "fail", None) for t in (0, 1)],
            (2, "fail", OPEN),
            (12, "allow", PROBE),
            (12, "probe_ok", CLOSED),
            (13, "fail", None),
            (14, "fail", None),
            (15, "allow", CALL),
            (15, "fail", OPEN),
        ],
        OPEN,
    ),
    "an abandoned probe lets the next call probe": (
        [
            *[(t, "fail", None) for t in (0, 1)],
            (2, "fail", OPEN),
            (12, "allow", PROBE),
            (12, "abandon", None),
            (12, "allow", PROBE),
        ],
        HALF_OPEN,
    ),
}


@pytest.mark.parametrize("steps,final", CASES.values(), ids=CASES.keys())
def test_breaker_transitions(steps: Steps, final: str) -> None:
    breaker = Breaker(SETTINGS)
    for n, (now, action, expected) in enumerate(steps):
        where = f"step {n} ({now}, {action})"
        if action == "allow":
            assert breaker.allow(now) == expected, where
        elif action == "hold":
            assert breaker.hold_until(now) == expected, where
        elif action == "abandon":
            breaker.abandon_probe()
        else:
            ok = action.endswith("ok")
            assert breaker.record(ok, now, probe=action.startswith("probe")) == expected, where
    assert breaker.state == final


def test_a_threshold_of_one_opens_on_the_first_failure() -> None:
    breaker = Breaker(BreakerSettings(failures=1, cool_down=1.0))
    assert breaker.record(False, 5.0) == OPEN
    assert breaker.allow(5.5) is None
    assert breaker.allow(6.0) == PROBE
