"""Admin access (bearer, session cookie, CSRF, masking) and the dashboard's arithmetic."""

from __future__ import annotations

import time

import pytest

from mailstream.observability.faust_metrics import in_seconds
from mailstream.web.admin_auth import AdminAuth, mask_email
from mailstream.web.figures import Minutes, add_up, figures, funnel

TOKEN = "an-admin-token-long-enough"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {TOKEN}x", False),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        ("Bearer ", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer(header: str | None, ok: bool) -> None:
    assert AdminAuth(TOKEN).bearer_ok(header) is ok


def test_sessions_are_signed_and_expire() -> None:
    auth = AdminAuth(TOKEN)
    session = auth.new_session()
    assert auth.session_ok(session)
    assert not auth.session_ok(session[:-2] + "xx")
    assert not AdminAuth(TOKEN + "-other").session_ok(session)
    assert not auth.session_ok(None) and not auth.session_ok("")
    time.sleep(1.1)
    assert not auth.session_ok(session, max_age=0)


def test_csrf_needs_the_matching_cookie_and_a_signature() -> None:
    auth = AdminAuth(TOKEN)
    value = auth.new_csrf()
    assert auth.csrf_ok(value, value)
    assert not auth.csrf_ok(value, auth.new_csrf())  # another form's value
    assert not auth.csrf_ok(None, value)
    assert not auth.csrf_ok("forged", "forged")  # matching but unsigned


def test_the_token_never_shows_and_must_be_long() -> None:
    assert TOKEN not in repr(AdminAuth(TOKEN))
    with pytest.raises(ValueError):
        AdminAuth("short")


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("ada@example.com", "a**@example.com"),
        ("jo@x.io", "j**@x.io"),
        ("a@x.io", "a**@x.io"),
        ("not-an-address", "***"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked


def samples(
    **series: list[tuple[dict[str, str], float]],
) -> dict[str, list[tuple[dict[str, str], float]]]:
    return dict(series)


def test_figures_pick_their_labels() -> None:
    s = samples(
        mailstream_events_consumed_total=[({}, 10.0)],
        mailstream_events_total=[
            ({"outcome": "processed", "event_type": "a"}, 6.0),
            ({"outcome": "processed", "event_type": "b"}, 2.0),
            ({"outcome": "throttled", "event_type": "a"}, 1.0),
        ],
        mailstream_send_decisions_total=[
            ({"category": "marketing", "decision": "drop", "reason": "capped"}, 3.0),
            ({"category": "marketing", "decision": "defer", "reason": "capped"}, 4.0),
            ({"category": "marketing", "decision": "defer", "reason": "quiet_hours"}, 5.0),
        ],
    )
    f = figures(s)
    assert (f["consumed"], f["processed"], f["throttled"]) == (10.0, 8.0, 1.0)
    assert (f["capped"], f["deferred"], f["sent"]) == (3.0, 9.0, 0.0)


def test_last_minute_is_the_growth_since_a_minute_ago() -> None:
    m = Minutes(window_s=60.0)
    for t in range(0, 130, 5):
        m.add(float(t), {"sent": float(t * 2)})
    assert m.last_minute(125.0, {"sent": 250.0}) == {"sent": 120.0}  # since t=65
    assert Minutes().last_minute(5.0, {"sent": 7.0}) == {"sent": 7.0}  # since start


def test_funnel_from_transitions_and_waiting_counts() -> None:
    s = samples(
        mailstream_workflow_transitions_total=[
            ({"workflow": "cart", "transition": "enrolled"}, 10.0),
            ({"workflow": "cart", "transition": "exited_goal"}, 3.0),
            ({"workflow": "cart", "transition": "timed_out"}, 1.0),
        ]
    )
    f = funnel({("cart", 0): 5, ("cart", 2): 2, ("tips", 1): 1}, s)
    assert f["cart"] == {
        "enrolled": 10.0,
        "completed": 0.0,
        "exited_goal": 3.0,
        "waiting": {"0": 5, "2": 2},
    }
    assert f["tips"]["waiting"] == {"1": 1}


def test_add_up_adds_numbers_and_merges_mappings() -> None:
    a = {"workers": 1, "totals": {"sent": 2.0}, "lag": {"0": {"lag": 1}}, "flag": True}
    b = {"workers": 1, "totals": {"sent": 3.0, "failed": 1.0}, "lag": {"1": {"lag": 4}}}
    assert add_up([a, b]) == {
        "workers": 2,
        "totals": {"sent": 5.0, "failed": 1.0},
        "lag": {"0": {"lag": 1}, "1": {"lag": 4}},
        "flag": True,
    }
    assert a["totals"] == {"sent": 2.0}, "the parts are not changed"


@pytest.mark.parametrize(
    ("name", "renamed"),
    [
        ("faust_events_runtime_ms", "faust_events_runtime_seconds"),
        ("faust_assign_latency", "faust_assign_latency_seconds"),
        ("faust_messages_received", None),
    ],
)
def test_faust_metric_names_in_seconds(name: str, renamed: str | None) -> None:
    assert in_seconds(name) == renamed
