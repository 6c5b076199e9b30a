"""Who may lift which suppression, and the history of both: an unsubscribe is undone by
the user's own opt-in, a bounce or a complaint only by an operator, and every step is
kept with its source, time and note."""

from __future__ import annotations

from typing import Any

import pytest

from mailstream.core.events import Event
from mailstream.core.user_state import UserState, apply_event
from mailstream.feedback.normalised import (
    LIFT,
    UNSUBSCRIBE,
    Feedback,
    FeedbackSettings,
    apply_feedback,
)
from mailstream.suppression import lifecycle
from mailstream.suppression.lift_requests import BadLift, lift_request


def user(*reasons: str) -> UserState:
    state = UserState("default", "ada", traits={"email": "ada@example.com"})
    for i, reason in enumerate(reasons):
        lifecycle.suppress(state, reason, f"test:{reason}", 1000 + i)
    return state


def identify(payload: dict[str, Any], metadata: dict[str, Any] | None = None) -> Event:
    return Event("e1", "identify", "ada", 5000, "default", payload, metadata or {})


def test_a_suppression_is_kept_with_its_first_source_and_logged_once() -> None:
    state = user("unsubscribe")
    assert not lifecycle.suppress(state, "unsubscribe", "later", 2000)
    assert state.suppressions["unsubscribe"].source == "test:unsubscribe"
    assert lifecycle.history(state) == [
        {
            "at": 1000,
            "action": "suppressed",
            "reason": "unsubscribe",
            "source": "test:unsubscribe",
            "note": "",
        }
    ]


def test_the_users_own_opt_in_lifts_an_unsubscribe_but_not_a_bounce_or_complaint() -> None:
    state = user("unsubscribe", "hard_bounce", "complaint")
    apply_event(state, identify({"consent": {"marketing": True}}, {"consent_source": "user"}))
    assert set(state.suppressions) == {"hard_bounce", "complaint"}
    assert state.consent == {"marketing": True}
    assert lifecycle.history(state)[-1] == {
        "at": 5000,
        "action": "lifted",
        "reason": "unsubscribe",
        "source": "user:identify",
        "note": "",
    }


@pytest.mark.parametrize(
    ("payload", "metadata"),
    [
        ({"consent": {"marketing": True}}, {}),  # an import or a sync, not the user
        ({"consent": {"marketing": True}}, {"consent_source": "crm"}),
        ({"consent": {"marketing": False}}, {"consent_source": "user"}),
        ({"consent": {"transactional": True}}, {"consent_source": "user"}),
        ({"plan": "pro"}, {"consent_source": "user"}),
    ],
)
def test_an_unsubscribe_stays_without_the_users_own_opt_in(
    payload: dict[str, Any], metadata: dict[str, Any]
) -> None:
    state = user("unsubscribe")
    apply_event(state, identify(payload, metadata))
    assert "unsubscribe" in state.suppressions
    assert [h["action"] for h in lifecycle.history(state)] == ["suppressed"]


def test_an_operator_lifts_one_reason_or_every_one_with_a_note() -> None:
    state = user("hard_bounce", "complaint", "unsubscribe")
    assert lifecycle.lift(state, ["complaint"], "operator:cli", 6000, "ticket 12") == ["complaint"]
    assert set(state.suppressions) == {"hard_bounce", "unsubscribe"}
    assert lifecycle.lift(state, None, "operator:api", 7000, "checked") == [
        "hard_bounce",
        "unsubscribe",
    ]
    assert state.suppressions == {}
    assert lifecycle.lift(state, None, "operator:api", 8000, "again") == []
    lifted = [h for h in lifecycle.history(state) if h["action"] == "lifted"]
    assert [(h["reason"], h["source"], h["note"]) for h in lifted] == [
        ("complaint", "operator:cli", "ticket 12"),
        ("hard_bounce", "operator:api", "checked"),
        ("unsubscribe", "operator:api", "checked"),
    ]


def test_the_history_keeps_the_latest_entries_and_survives_the_record() -> None:
    state = user()
    for i in range(lifecycle.HISTORY + 5):
        lifecycle.suppress(state, "unsubscribe", "one-click", i)
        lifecycle.lift(state, None, "operator:cli", i, f"n{i}")
    assert len(state.suppression_log) == lifecycle.HISTORY
    assert state.suppression_log[-1][4] == f"n{lifecycle.HISTORY + 4}"
    again = UserState.decode(state.encode())
    assert again.suppression_log == state.suppression_log
    assert again.to_json()["suppression_history"] == lifecycle.history(state)


def test_lift_feedback_lifts_what_it_names_and_an_unsubscribe_suppresses() -> None:
    state = user("hard_bounce", "complaint")
    settings = FeedbackSettings()
    fb = lift_request("ada", None, "fixed the mailbox", "hard_bounce", "cli", 9000)
    assert Feedback.decode(fb.encode()) == fb
    assert apply_feedback(state, fb, settings) == LIFT
    assert set(state.suppressions) == {"complaint"}
    assert apply_feedback(state, fb, settings) is None  # nothing left to lift of that reason
    unsubscribe = Feedback(UNSUBSCRIBE, "one-click", 9500, user_id="ada")
    assert apply_feedback(state, unsubscribe, settings) == "unsubscribe"
    assert [(h["action"], h["reason"]) for h in lifecycle.history(state)][-2:] == [
        ("lifted", "hard_bounce"),
        ("suppressed", "unsubscribe"),
    ]


@pytest.mark.parametrize(
    ("user_id", "tenant", "note", "only", "field"),
    [
        ("", None, "why", None, "user_id"),
        ("ada", "", "why", None, "tenant"),
        ("ada", None, None, None, "reason"),
        ("ada", None, "  ", None, "reason"),
        ("ada", None, "x" * 501, None, "reason"),
        ("ada", None, "why", "spam", "only"),
    ],
)
def test_a_lift_request_that_cannot_be_taken_names_its_field(
    user_id: str, tenant: str | None, note: str | None, only: str | None, field: str
) -> None:
    with pytest.raises(BadLift, match=f"^{field}:"):
        lift_request(user_id, tenant, note, only, "api", 1)
