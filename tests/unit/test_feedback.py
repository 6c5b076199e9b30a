"""Applying normalised feedback to a user and to a send's delivery record."""

from __future__ import annotations

import pytest

from mailstream.core.user_state import UserState
from mailstream.delivery.state_machine import Delivery, note_feedback
from mailstream.feedback.normalised import (
    BOUNCE,
    CLICK,
    COMPLAINT,
    DEFERRED,
    DELIVERED,
    OPEN,
    UNSUBSCRIBE,
    Feedback,
    FeedbackSettings,
    apply_feedback,
    destination,
)
from mailstream.suppression.entries import Suppression

T = 1_800_000_000_000
DAY = 86_400_000
SETTINGS = FeedbackSettings(soft_bounces=3, soft_bounce_window_ms=7 * DAY)


def fb(kind: str, at: int = T, **extra: object) -> Feedback:
    return Feedback(kind=kind, provider="sendgrid", at=at, user_id="ada", **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "done", "suppressed"),
    [
        (fb(BOUNCE, bounce="hard"), "hard_bounce", {"hard_bounce": "all"}),
        (fb(COMPLAINT), "complaint", {"complaint": "all"}),
        (fb(UNSUBSCRIBE), "unsubscribe", {"unsubscribe": "marketing"}),
        (fb(BOUNCE, bounce="soft"), "soft_bounce", {}),
        (fb(DELIVERED), DELIVERED, {}),
        (fb(OPEN), OPEN, {}),
        (fb(CLICK, url="https://x.example"), CLICK, {}),
        (fb(DEFERRED), None, {}),
    ],
)
def test_each_kind(event: Feedback, done: str | None, suppressed: dict[str, str]) -> None:
    user = UserState("default", "ada")
    assert apply_feedback(user, event, SETTINGS) == done
    assert {r: s.scope for r, s in user.suppressions.items()} == suppressed
    for reason in suppressed:
        assert user.suppressions[reason].source == f"sendgrid:{event.kind}"
        assert user.suppressions[reason].at == T


@pytest.mark.parametrize(
    ("kind", "trait"), [(DELIVERED, "last_delivered"), (OPEN, "last_open"), (CLICK, "last_click")]
)
def test_engagement_traits_keep_the_latest_time(kind: str, trait: str) -> None:
    user = UserState("default", "ada")
    apply_feedback(user, fb(kind, T), SETTINGS)
    apply_feedback(user, fb(kind, T - 5000), SETTINGS)  # an older event arriving late
    assert user.traits[trait] == T
    apply_feedback(user, fb(kind, T + 5000), SETTINGS)
    assert user.traits[trait] == T + 5000


def test_enough_soft_bounces_within_the_window_make_a_hard_one() -> None:
    user = UserState("default", "ada")
    results = [
        apply_feedback(user, fb(BOUNCE, T + i * DAY, bounce="soft"), SETTINGS) for i in range(3)
    ]
    assert results == ["soft_bounce", "soft_bounce", "hard_bounce"]
    assert user.suppressions["hard_bounce"].source == "sendgrid:soft_bounces"


def test_soft_bounces_spread_wider_than_the_window_do_not() -> None:
    user = UserState("default", "ada")
    for i in range(10):
        done = apply_feedback(user, fb(BOUNCE, T + i * 4 * DAY, bounce="soft"), SETTINGS)
        assert done == "soft_bounce"
    assert user.suppressions == {}
    assert len(user.soft_bounces) <= SETTINGS.soft_bounces  # bounded


def test_a_second_suppression_of_the_same_reason_keeps_the_first() -> None:
    user = UserState("default", "ada")
    apply_feedback(user, fb(UNSUBSCRIBE, T), SETTINGS)
    assert apply_feedback(user, fb(UNSUBSCRIBE, T + 1000), SETTINGS) is None
    assert user.suppressions["unsubscribe"].at == T


def test_feedback_round_trips_and_rejects_unknown_kinds() -> None:
    event = fb(BOUNCE, bounce="hard", send_id="s1", email="ada@example.com", event_id="e1")
    assert Feedback.decode(event.encode()) == event
    assert event.key() == b"ada"
    assert Feedback(kind=OPEN, provider="p", at=T).key() is None
    with pytest.raises(ValueError, match="unknown feedback kind"):
        Feedback.decode(b'{"kind": "exploded", "provider": "p", "at": 1}')


def test_the_delivery_record_notes_each_report_once_latest_first() -> None:
    delivery = Delivery("sent", "marketing", "ada", "default")
    assert note_feedback(delivery, T, "delivered")
    assert note_feedback(delivery, T + 10, "open")
    assert not note_feedback(delivery, T, "delivered")  # a webhook retried
    assert delivery.feedback == [[T + 10, "open"], [T, "delivered"]]
    for i in range(20):
        note_feedback(delivery, T + 100 + i, "click")
    assert len(delivery.feedback) == 10
    assert Delivery.decode(delivery.encode()) == delivery


@pytest.mark.parametrize(
    ("fb", "expected"),
    [
        # a user: to the feedback topic, keyed by user, for the user's worker
        (Feedback(kind=OPEN, provider="sendgrid", at=T, user_id="u-1"), ("feedback", b"u-1")),
        # only an address: what suppresses goes to the global list by address
        (
            Feedback(kind=BOUNCE, provider="mailgun", at=T, email="A@Example.com", bounce="hard"),
            ("suppression", b"a@example.com"),
        ),
        (
            Feedback(kind=COMPLAINT, provider="mailgun", at=T, email="a@example.com"),
            ("suppression", b"a@example.com"),
        ),
        # ... and the rest has nowhere to go
        (Feedback(kind=BOUNCE, provider="x", at=T, email="a@example.com", bounce="soft"), None),
        (Feedback(kind=OPEN, provider="x", at=T, email="a@example.com"), None),
        (Feedback(kind=COMPLAINT, provider="x", at=T, email="not an address"), None),
    ],
)
def test_destination(fb: Feedback, expected: tuple[str, bytes] | None) -> None:
    found = destination(fb, "feedback", "suppression")
    assert (found[:2] if found else None) == expected
    if found and found[0] == "feedback":
        assert Feedback.decode(found[2]) == fb
    if found and found[0] == "suppression":
        assert Suppression.decode(found[2]).source == f"webhook:{fb.provider}"
