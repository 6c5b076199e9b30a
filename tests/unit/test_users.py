"""A user's state: trait merging, folding events in, the stored record and the table key."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mailstream.core.events import Event
from mailstream.core.user_state import UserState, apply_event, merge_traits, split_key, user_key
from mailstream.suppression.entries import Suppression

TS = 1_700_000_000_000


def make_event(event_type: str, timestamp: int, payload: dict[str, Any] | None = None) -> Event:
    return Event(
        event_id=f"{event_type}-{timestamp}",
        event_type=event_type,
        user_id="alice",
        timestamp=timestamp,
        tenant_id="default",
        payload=payload or {},
    )


@pytest.mark.parametrize(
    ("traits", "consent", "incoming", "want_traits", "want_consent"),
    [
        pytest.param({}, {}, {"first_name": "Ada"}, {"first_name": "Ada"}, {}, id="set"),
        pytest.param(
            {"first_name": "Ada"},
            {},
            {"first_name": "Grace"},
            {"first_name": "Grace"},
            {},
            id="overwrite",
        ),
        pytest.param(
            {"first_name": "Ada", "locale": "en"},
            {},
            {"first_name": None},
            {"locale": "en"},
            {},
            id="null-removes",
        ),
        pytest.param(
            {"locale": "en"}, {}, {"first_name": None}, {"locale": "en"}, {}, id="null-absent-noop"
        ),
        pytest.param(
            {"first_name": "Ada"},
            {},
            {},
            {"first_name": "Ada"},
            {},
            id="empty-identify-keeps-all",
        ),
        pytest.param(
            {},
            {},
            {"email": "  Ada.Lovelace@Example.COM\t"},
            {"email": "ada.lovelace@example.com"},
            {},
            id="email-lowercased-and-trimmed",
        ),
        pytest.param(
            {"email": "old@example.com"},
            {},
            {"email": None},
            {},
            {},
            id="email-null-removes",
        ),
        pytest.param(
            {},
            {},
            {"consent": {"marketing": True}},
            {},
            {"marketing": True},
            id="consent-granted-kept-apart-from-traits",
        ),
        pytest.param(
            {},
            {"marketing": True, "transactional": True},
            {"consent": {"marketing": False}},
            {},
            {"marketing": False, "transactional": True},
            id="consent-merges-flag-by-flag",
        ),
        pytest.param(
            {},
            {"marketing": True, "transactional": True},
            {"consent": {"marketing": None}},
            {},
            {"transactional": True},
            id="consent-null-removes-one-flag",
        ),
        pytest.param(
            {},
            {"marketing": True},
            {"consent": {}},
            {},
            {"marketing": True},
            id="consent-empty-changes-nothing",
        ),
        pytest.param(
            {},
            {"marketing": True, "transactional": True},
            {"consent": None},
            {},
            {},
            id="consent-null-removes-every-flag",
        ),
        pytest.param(
            {"plan": "free"},
            {},
            {"plan": "pro", "seats": 3, "tags": ["a", "b"], "address": {"city": "Paris"}},
            {"plan": "pro", "seats": 3, "tags": ["a", "b"], "address": {"city": "Paris"}},
            {},
            id="custom-traits-kept",
        ),
        pytest.param(
            {"first_name": "Ada", "locale": "en"},
            {"marketing": False},
            {
                "first_name": None,
                "last_name": "Lovelace",
                "email": "ADA@example.com",
                "timezone": "Europe/London",
                "consent": {"marketing": True, "transactional": True},
            },
            {
                "locale": "en",
                "last_name": "Lovelace",
                "email": "ada@example.com",
                "timezone": "Europe/London",
            },
            {"marketing": True, "transactional": True},
            id="everything-at-once",
        ),
    ],
)
def test_merge_traits(
    traits: dict[str, Any],
    consent: dict[str, bool],
    incoming: dict[str, Any],
    want_traits: dict[str, Any],
    want_consent: dict[str, bool],
) -> None:
    state = UserState("default", "alice", traits=dict(traits), consent=dict(consent))

    merge_traits(state, incoming)

    assert state.traits == want_traits
    assert state.consent == want_consent


def test_identify_changes_traits_but_not_counts_or_activity() -> None:
    state = UserState("default", "alice")
    apply_event(state, make_event("page_view", TS))

    apply_event(state, make_event("identify", TS + 1000, {"first_name": "Ada"}))

    assert state.traits == {"first_name": "Ada"}
    assert state.events == {"page_view": 1}
    assert state.last_activity == TS


def test_identify_alone_leaves_no_activity() -> None:
    state = UserState("default", "alice")

    apply_event(state, make_event("identify", TS, {"email": "ada@example.com"}))

    assert state.events == {}
    assert state.last_activity is None
    assert state.first_seen == TS


def test_other_events_count_per_type() -> None:
    state = UserState("default", "alice")

    for i, event_type in enumerate(["page_view", "order.placed", "page_view", "page_view"]):
        apply_event(state, make_event(event_type, TS + i))

    assert state.events == {"page_view": 3, "order.placed": 1}
    assert state.traits == {}


@pytest.mark.parametrize(
    ("events", "first_seen", "last_activity"),
    [
        pytest.param([("page_view", TS)], TS, TS, id="single"),
        pytest.param(
            [("page_view", TS), ("page_view", TS + 5), ("order", TS + 9)],
            TS,
            TS + 9,
            id="in-order",
        ),
        pytest.param(
            [("page_view", TS + 9), ("page_view", TS), ("order", TS + 5)],
            TS,
            TS + 9,
            id="out-of-order-does-not-move-activity-back",
        ),
        pytest.param(
            [("page_view", TS + 5), ("identify", TS), ("identify", TS + 50)],
            TS,
            TS + 5,
            id="identify-counts-for-first-seen-only",
        ),
        pytest.param([("page_view", TS), ("page_view", TS)], TS, TS, id="equal-timestamps"),
    ],
)
def test_first_seen_is_the_minimum_and_last_activity_the_maximum(
    events: list[tuple[str, int]], first_seen: int, last_activity: int
) -> None:
    state = UserState("default", "alice")

    for event_type, timestamp in events:
        apply_event(state, make_event(event_type, timestamp))

    assert state.first_seen == first_seen
    assert state.last_activity == last_activity


def _full_state() -> UserState:
    state = UserState(
        "acme",
        "user:42/ünï",
        traits={"email": "ada@example.com", "plan": "pro", "tags": ["a"], "n": 1.5},
        consent={"marketing": True, "transactional": False},
        first_seen=TS,
        last_activity=TS + 1000,
        events={"page_view": 3, "order.placed": 1},
        sampling={"page_view": [TS, "/home"], "search": [TS]},
        throttle={"page_view": [TS - 5, TS]},
        suppressions={"unsubscribe": Suppression("unsubscribe", "one-click", TS)},
        sent=[TS - 86_400_000, TS],
        deferred={
            "s1": {
                "workflow": "cart",
                "enrollment_id": "e1",
                "step": 1,
                "template": "cart_reminder",
                "category": "marketing",
                "priority": "normal",
                "context": {"items": [1]},
                "event": {},
                "until": TS + 3_600_000,
                "reason": "quiet_hours",
            }
        },
        decisions=[
            [TS, "s1", "cart", "cart_reminder", "marketing", "defer", "quiet_hours", TS + 1]
        ],
        segments={"vip": TS, "beta": TS + 5},
        changes={"order_updated/order_id": {"A-1": {"status": "paid"}, "A-2": {"n": 2}}},
    )
    for i in range(50):
        state.seen.check_and_add(f"evt-{i}", TS // 1000 + i)
    return state


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(UserState("default", "alice"), id="new-user"),
        pytest.param(_full_state(), id="full-state-with-dedup-window"),
    ],
)
def test_encode_decode_round_trip(state: UserState) -> None:
    decoded = UserState.decode(state.encode())

    assert decoded.to_json() == state.to_json()
    assert decoded.seen.to_bytes() == state.seen.to_bytes()
    assert decoded.encode() == state.encode()


def test_the_decoded_dedup_window_still_detects_duplicates() -> None:
    decoded = UserState.decode(_full_state().encode())

    assert len(decoded.seen) == 50
    assert decoded.seen.check_and_add("evt-7", TS // 1000) is True
    assert decoded.seen.check_and_add("evt-new", TS // 1000) is False


def test_decode_refuses_an_unknown_record_format() -> None:
    data = bytearray(UserState("default", "alice").encode())
    data[0] = 2

    with pytest.raises(ValueError, match="unknown user record format 2"):
        UserState.decode(bytes(data))


def test_to_json_is_the_api_view_without_the_dedup_window() -> None:
    state = _full_state()

    view = state.to_json()

    assert set(view) == {
        "tenant_id",
        "user_id",
        "traits",
        "consent",
        "first_seen",
        "last_activity",
        "events",
        "enrollments",
        "entries",
        "suppressions",
        "suppression_history",
        "deferred_sends",
        "send_decisions",
        "segments",
        "last_seen_fields",
    }
    assert orjson.loads(orjson.dumps(view)) == view
    assert view["suppressions"]["unsubscribe"]["scope"] == "marketing"
    assert view["deferred_sends"] == [
        {
            "send_id": "s1",
            "workflow": "cart",
            "template": "cart_reminder",
            "until": TS + 3_600_000,
            "reason": "quiet_hours",
        }
    ]
    assert view["send_decisions"][0]["decision"] == "defer"
    assert view["send_decisions"][0]["until"] == TS + 1


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param("alice", id="plain"),
        pytest.param("user:42", id="colon"),
        pytest.param("org/team/user", id="slashes"),
        pytest.param("a:b/c:d", id="colons-and-slashes"),
        pytest.param("ünïcødé-用户-🎉", id="unicode"),
        pytest.param("with space", id="space"),
        pytest.param("a\x1fb", id="contains-the-key-separator"),
    ],
)
@pytest.mark.parametrize("tenant_id", ["default", "acme.eu-1_b"])
def test_user_key_round_trips(tenant_id: str, user_id: str) -> None:
    key = user_key(tenant_id, user_id)

    assert isinstance(key, bytes)
    assert split_key(key) == (tenant_id, user_id)


def test_the_same_user_in_two_tenants_has_two_keys() -> None:
    assert user_key("acme", "alice") != user_key("globex", "alice")
