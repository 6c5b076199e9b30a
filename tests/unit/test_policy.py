"""The send policy on a fake clock: suppression, consent, caps, quiet hours, held sends."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from mailstream.core.events import IDENTIFY, Event
from mailstream.core.user_state import DECISION_FIELDS, UserState, apply_event
from mailstream.core.windows import Cap, QuietHours, parse_clock
from mailstream.suppression.entries import Suppression
from mailstream.workflows.automation import Automation
from mailstream.workflows.engine import WAIT_TIMER, Effects, Engine, SendIntent, TimerOp
from mailstream.workflows.send_policy import (
    DEFER_TIMER,
    OK,
    Decision,
    Policy,
    PolicySettings,
    decide,
)
from mailstream.workflows.spec import WorkflowSpec, compile_workflow

MIN = 60_000
H = 60 * MIN
DAY = 24 * H
UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
EMAIL = "alice@example.com"


def at(text: str, tz: ZoneInfo = UTC_ZONE) -> int:
    """Epoch ms of a local wall-clock time, e.g. at("2026-03-29 01:30", PARIS)."""
    local = datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz)
    return int(local.timestamp() * 1000)


NOON = at("2026-01-15 12:00")


def quiet(text: str) -> QuietHours:
    start, _, end = text.partition("-")
    return QuietHours(parse_clock(start), parse_clock(end))


def make_user(consent: bool | None = True, **traits: Any) -> UserState:
    user = UserState(tenant_id="acme", user_id="alice", traits={"email": EMAIL, **traits})
    if consent is not None:
        user.consent["marketing"] = consent
    return user


def intent(
    send_id: str, category: str = "marketing", workflow: str = "cart", enrollment: str = "e1"
) -> SendIntent:
    ctx, ev = {"items": [{"sku": "A1"}]}, {"cart": "c1"}
    template = f"{workflow}_{send_id}"
    return SendIntent(send_id, workflow, enrollment, 1, template, category, "normal", ctx, ev)


def drop(reason: str) -> Decision:
    return Decision("drop", reason)


def defer(reason: str, until: int) -> Decision:
    return Decision("defer", reason, until)


def entry(reason: str) -> Suppression:
    return Suppression(reason, "test", NOON - DAY)


# ---- suppression ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "stops_transactional"),
    [
        ("hard_bounce", True),
        ("complaint", True),
        ("manual", True),
        ("import", True),
        ("unsubscribe", False),
    ],
)
@pytest.mark.parametrize("category", ["marketing", "transactional"])
@pytest.mark.parametrize("source", ["user", "list"])
def test_suppression_by_reason_category_and_source(
    reason: str, stops_transactional: bool, category: str, source: str
) -> None:
    user = make_user(consent=True)
    listed = entry(reason) if source == "list" else None
    if source == "user":
        user.suppressions[reason] = entry(reason)
    stopped = category == "marketing" or stops_transactional
    why = "suppressed" if source == "user" else "globally_suppressed"
    expected = drop(why) if stopped else OK
    assert decide(PolicySettings(), user, category, NOON, listed) == expected


@pytest.mark.parametrize(
    ("on_user", "listed", "category", "consent", "expected"),
    [
        (["unsubscribe"], "hard_bounce", "marketing", True, "suppressed"),  # the user's first
        # the user's unsubscribe does not stop a receipt, the listed bounce does
        (["unsubscribe"], "hard_bounce", "transactional", True, "globally_suppressed"),
        (["unsubscribe", "complaint"], None, "transactional", True, "suppressed"),
        (["complaint"], None, "marketing", False, "suppressed"),  # not "no_consent"
        ([], "complaint", "marketing", False, "globally_suppressed"),
        ([], "unsubscribe", "transactional", False, None),  # receipts still go
    ],
)
def test_suppression_precedence(
    on_user: list[str], listed: str | None, category: str, consent: bool, expected: str | None
) -> None:
    user = make_user(consent=consent)
    user.suppressions = {reason: entry(reason) for reason in on_user}
    got = decide(PolicySettings(), user, category, NOON, entry(listed) if listed else None)
    assert got == (OK if expected is None else drop(expected))


def test_suppression_wins_over_caps_and_quiet_hours() -> None:
    settings = PolicySettings(caps=(Cap(1, per_ms=DAY),), quiet=quiet("21:00-08:00"))
    user = make_user(consent=True)
    user.sent = [at("2026-01-15 22:00")]
    user.suppressions["unsubscribe"] = entry("unsubscribe")
    assert decide(settings, user, "marketing", at("2026-01-15 23:00")) == drop("suppressed")


@pytest.mark.parametrize("email", [None, ""], ids=["no-email", "empty-email"])
@pytest.mark.parametrize("category", ["marketing", "transactional"])
def test_a_user_without_an_address_is_dropped_before_anything_else(
    email: str | None, category: str
) -> None:
    user = make_user(consent=True, email=email)
    user.suppressions["complaint"] = entry("complaint")
    assert decide(PolicySettings(), user, category, NOON) == drop("no_recipient")


# ---- consent ----------------------------------------------------------------------------

BY_REGION = {"eu": "opt_in", "us": "opt_out"}


@pytest.mark.parametrize(
    ("default", "region", "granted", "sends"),
    [
        ("opt_out", "EU", True, True),
        ("opt_out", "EU", None, False),
        ("opt_out", "eu", False, False),
        ("opt_out", "Eu", None, False),  # the region trait matches case-insensitively
        ("opt_out", "US", None, True),
        ("opt_out", "US", False, False),
        ("opt_out", "BR", None, True),  # a region without an override: the default
        ("opt_out", None, None, True),
        ("opt_out", 42, None, True),  # not a string: the default
        ("opt_in", "BR", None, False),
        ("opt_in", "BR", True, True),
        ("opt_in", None, None, False),
        ("opt_in", None, False, False),
        ("opt_in", "us", None, True),
    ],
)
def test_marketing_consent_by_mode_and_region(
    default: Any, region: object, granted: bool | None, sends: bool
) -> None:
    settings = PolicySettings(consent=default, consent_by_region=BY_REGION)
    user = make_user(consent=granted) if region is None else make_user(granted, region=region)
    expected = OK if sends else drop("no_consent")
    assert decide(settings, user, "marketing", NOON) == expected


@pytest.mark.parametrize("granted", [False, None])
def test_transactional_mail_ignores_consent(granted: bool | None) -> None:
    settings = PolicySettings(consent="opt_in", consent_by_region=BY_REGION)
    assert decide(settings, make_user(granted, region="EU"), "transactional", NOON) == OK


# ---- frequency caps ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "sent", "until"),
    [
        ((Cap(2, per_ms=H),), [NOON - 50 * MIN, NOON - 40 * MIN], NOON + 10 * MIN),
        ((Cap(1, per_ms=DAY),), [NOON - DAY + 1], NOON + 1),
        ((Cap(1, per_ms=DAY),), [NOON - DAY], None),  # exactly a day ago: outside
        ((Cap(2, per_ms=H),), [NOON - 50 * MIN], None),
        ((Cap(5, per_ms=DAY), Cap(1, per_ms=H)), [NOON - 30 * MIN], NOON + 30 * MIN),
    ],
)
def test_sliding_caps_defer_until_they_free(
    caps: tuple[Cap, ...], sent: list[int], until: int | None
) -> None:
    user = make_user()
    user.sent = sent
    expected = OK if until is None else defer("capped", until)
    assert decide(PolicySettings(caps=caps), user, "marketing", NOON) == expected


@pytest.mark.parametrize(
    ("tz_name", "sent", "now", "until"),
    [
        ("Europe/Paris", "2026-01-14 23:30", "2026-01-15 00:10", None),  # a new day
        ("America/New_York", "2026-01-15 00:05", "2026-01-15 23:59", "2026-01-16 00:00"),
        (None, "2026-01-15 20:00", "2026-01-16 02:00", None),  # no zone trait: default_tz
        # Paris springs forward on 2026-03-29 (a 23 h day) and falls back on 2026-10-25 (25 h)
        ("Europe/Paris", "2026-03-29 00:30", "2026-03-29 12:00", "2026-03-30 00:00"),
        ("Europe/Paris", "2026-10-25 01:00", "2026-10-25 23:30", "2026-10-26 00:00"),
    ],
)
def test_calendar_day_cap_counts_the_users_own_day(
    tz_name: str | None, sent: str, now: str, until: str | None
) -> None:
    settings = PolicySettings(caps=(Cap(1, calendar="day"),))
    user = make_user() if tz_name is None else make_user(timezone=tz_name)
    tz = ZoneInfo(tz_name or "UTC")
    user.sent = [at(sent, tz)]
    expected = OK if until is None else defer("capped", at(until, tz))
    assert decide(settings, user, "marketing", at(now, tz)) == expected


def test_the_same_instant_is_a_new_day_in_paris_but_not_in_new_york() -> None:
    settings = PolicySettings(caps=(Cap(1, calendar="day"),))
    sent, now = at("2026-01-15 20:00"), at("2026-01-16 02:00")  # 21:00 and 03:00 in Paris
    paris, new_york = make_user(timezone="Europe/Paris"), make_user(timezone="America/New_York")
    paris.sent = new_york.sent = [sent]
    assert decide(settings, paris, "marketing", now) == OK
    assert decide(settings, new_york, "marketing", now).until == at("2026-01-16 00:00", NEW_YORK)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOON, drop("capped")),
        # not capped at 23:00, only quiet: dropping applies to caps alone
        (at("2026-01-16 23:00"), defer("quiet_hours", at("2026-01-17 08:00"))),
    ],
)
def test_when_capped_drop(now: int, expected: Decision) -> None:
    settings = PolicySettings(
        caps=(Cap(1, per_ms=DAY),), when_capped="drop", quiet=quiet("21:00-08:00")
    )
    user = make_user()
    user.sent = [NOON - H]
    assert decide(settings, user, "marketing", now) == expected


@pytest.mark.parametrize("when_capped", ["defer", "drop"])
def test_transactional_mail_is_never_capped_or_held(when_capped: Any) -> None:
    settings = PolicySettings(
        caps=(Cap(1, per_ms=DAY), Cap(1, calendar="day")),
        when_capped=when_capped,
        quiet=quiet("00:00-23:59"),
    )
    user = make_user()
    user.sent = [NOON - i * MIN for i in range(1, 30)]
    assert decide(settings, user, "transactional", NOON) == OK


# ---- quiet hours ------------------------------------------------------------------------

NIGHT = PolicySettings(quiet=quiet("21:00-08:00"))  # default_tz UTC
NY = {"timezone": "America/New_York"}
OWN = {"quiet_hours": "22:00-07:00"}
DAYTIME = {"quiet_hours": "13:00-15:00"}


@pytest.mark.parametrize(
    ("traits", "now", "until"),
    [
        ({}, "2026-01-15 20:59", None),
        ({}, "2026-01-15 21:00", at("2026-01-16 08:00")),
        ({}, "2026-01-16 03:00", at("2026-01-16 08:00")),  # past midnight
        ({}, "2026-01-16 08:00", None),
        (NY, "2026-01-15 23:00", None),  # 18:00 in New York
        (NY, "2026-01-16 03:00", at("2026-01-16 08:00", NEW_YORK)),  # 22:00 there
        ({"timezone": "Mars/Olympus"}, "2026-01-15 23:00", at("2026-01-16 08:00")),
        (OWN, "2026-01-15 21:30", None),
        (OWN, "2026-01-16 07:30", None),
        (OWN, "2026-01-15 23:00", at("2026-01-16 07:00")),
        (OWN | NY, "2026-01-16 03:00", at("2026-01-16 07:00", NEW_YORK)),
        (DAYTIME, "2026-01-15 14:00", at("2026-01-15 15:00")),
        (DAYTIME, "2026-01-15 21:30", None),  # replaces the night window, not added to it
        # malformed: the configured window applies
        ({"quiet_hours": "10pm-7am"}, "2026-01-15 21:30", at("2026-01-16 08:00")),
        ({"quiet_hours": "25:00-07:00"}, "2026-01-15 21:30", at("2026-01-16 08:00")),
        ({"quiet_hours": "2200"}, "2026-01-15 21:30", at("2026-01-16 08:00")),
        ({"quiet_hours": ""}, "2026-01-15 21:30", at("2026-01-16 08:00")),
        ({"quiet_hours": 22}, "2026-01-15 21:30", at("2026-01-16 08:00")),
    ],
)
def test_quiet_hours_in_the_users_zone(traits: dict[str, Any], now: str, until: int | None) -> None:
    expected = OK if until is None else defer("quiet_hours", until)
    assert decide(NIGHT, make_user(**traits), "marketing", at(now)) == expected


def test_a_users_own_quiet_hours_apply_without_a_configured_window() -> None:
    user = make_user(quiet_hours="22:00-07:00")
    assert decide(PolicySettings(), user, "marketing", at("2026-01-15 23:00")) == defer(
        "quiet_hours", at("2026-01-16 07:00")
    )
    assert decide(PolicySettings(), make_user(), "marketing", at("2026-01-15 23:00")) == OK


CAPPED_NIGHTS = PolicySettings(
    caps=(Cap(1, per_ms=10 * H),), quiet=quiet("22:00-07:00"), default_tz=PARIS
)


@pytest.mark.parametrize(
    ("sent", "now", "reason", "until"),
    [
        ("2026-01-15 09:00", "2026-01-15 10:00", "capped", "2026-01-15 19:00"),
        # frees at 01:00, inside the window: held until it ends, still "capped"
        ("2026-01-15 15:00", "2026-01-15 16:00", "capped", "2026-01-16 07:00"),
        # quiet now, but the cap frees after the window has ended
        ("2026-01-14 21:30", "2026-01-15 06:30", "capped", "2026-01-15 07:30"),
        ("2026-01-14 09:00", "2026-01-15 23:00", "quiet_hours", "2026-01-16 07:00"),
    ],
)
def test_caps_and_quiet_hours_together(sent: str, now: str, reason: str, until: str) -> None:
    user = make_user()
    user.sent = [at(sent, PARIS)]
    assert decide(CAPPED_NIGHTS, user, "marketing", at(now, PARIS)) == defer(
        reason, at(until, PARIS)
    )


# ---- Policy.review: applying the decisions ----------------------------------------------

ONE_A_DAY = (Cap(1, calendar="day"),)


@pytest.mark.parametrize("when_capped", ["defer", "drop"])
def test_review_keeps_sends_holds_deferred_and_forgets_dropped(when_capped: Any) -> None:
    policy = Policy(PolicySettings(caps=ONE_A_DAY, when_capped=when_capped))
    user = make_user()
    first, receipt, second = intent("m1"), intent("t1", "transactional"), intent("m2")
    fx = Effects(sends=[first, receipt, second])
    policy.review(user, fx, NOON)

    midnight = at("2026-01-16 00:00")
    held = when_capped == "defer"
    assert fx.sends == [first, receipt]
    assert user.sent == [NOON]  # the transactional send does not count
    assert fx.timers_add == ([TimerOp(midnight, DEFER_TIMER, "m2")] if held else [])
    assert list(user.deferred) == (["m2"] if held else [])
    second = ("defer", "capped", midnight) if held else ("drop", "capped", None)
    rows = [dict(zip(DECISION_FIELDS, d, strict=True)) for d in user.decisions]
    assert [(r["send_id"], r["decision"], r["reason"], r["until"]) for r in rows] == [
        ("m1", "send", "ok", None),
        ("t1", "send", "ok", None),
        ("m2", *second),
    ]
    assert rows[1] == {
        "at": NOON,
        "send_id": "t1",
        "workflow": "cart",
        "template": "cart_t1",
        "category": "transactional",
        "decision": "send",
        "reason": "ok",
        "until": None,
    }
    assert fx.decisions == [
        ("marketing", "send", "ok"),
        ("transactional", "send", "ok"),
        ("marketing", second[0], "capped"),
    ]
    assert fx.changed


DAILY_3 = (Cap(3, per_ms=DAY),)


@pytest.mark.parametrize(
    ("caps", "category", "history", "remembered"),
    [
        ((), "marketing", [], []),  # nothing to count them against
        (DAILY_3, "transactional", [], []),
        (DAILY_3, "marketing", [], [NOON, NOON]),
        (DAILY_3, "marketing", [NOON - DAY, NOON - H], [NOON - H, NOON, NOON]),  # pruned
    ],
)
def test_only_marketing_sends_under_caps_are_remembered(
    caps: tuple[Cap, ...], category: str, history: list[int], remembered: list[int]
) -> None:
    user = make_user()
    user.sent = history
    fx = Effects(sends=[intent("s1", category), intent("s2", category)])
    Policy(PolicySettings(caps=caps)).review(user, fx, NOON)
    assert [s.send_id for s in fx.sends] == ["s1", "s2"]
    assert user.sent == remembered


def test_the_decision_log_keeps_only_the_latest() -> None:
    user = make_user()
    fx = Effects(sends=[intent(f"t{i}", "transactional") for i in range(5)])
    Policy(PolicySettings(decisions_kept=3)).review(user, fx, NOON)
    assert [d[1] for d in user.decisions] == ["t2", "t3", "t4"]
    assert len(fx.decisions) == 5


# ---- Policy.on_deferred: a held send comes due ------------------------------------------


def held_at_night(policy: Policy, user: UserState, *sends: SendIntent) -> int:
    """Review ``sends`` at 23:00, in the night window, and return when they are held until."""
    fx = Effects(sends=list(sends))
    policy.review(user, fx, at("2026-01-15 23:00"))
    assert fx.sends == [] and len(user.deferred) == len(sends)
    return fx.timers_add[0].due


def test_a_due_held_send_is_decided_again_and_sent_as_it_was() -> None:
    policy = Policy(NIGHT)
    user = make_user()
    original = intent("m1")
    until = held_at_night(policy, user, original)
    assert until == at("2026-01-16 08:00")
    assert user.deferred["m1"]["reason"] == "quiet_hours"

    fx = policy.on_deferred(user, "m1", until, until + 5)
    assert fx.sends == [original]
    assert fx.decisions == [("marketing", "send", "ok")]
    assert (fx.timers_add, fx.changed, user.deferred) == ([], True, {})
    assert user.decisions[-1][:2] == [until + 5, "m1"]
    assert policy.on_deferred(user, "m1", until, until + 6) == Effects()  # already fired


@pytest.mark.parametrize(
    ("send_id", "due_shift"),
    [("m1", -1), ("m1", +1), ("gone", 0)],
    ids=["earlier-due", "later-due", "not-held"],
)
def test_a_stale_deferral_timer_does_nothing(send_id: str, due_shift: int) -> None:
    policy = Policy(NIGHT)
    user = make_user()
    until = held_at_night(policy, user, intent("m1"))
    before = (dict(user.deferred), list(user.decisions))
    fx = policy.on_deferred(user, send_id, until + due_shift, until + 1)
    assert fx == Effects() and not fx.changed
    assert (dict(user.deferred), list(user.decisions)) == before


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("unsubscribed", "suppressed"),
        ("listed", "globally_suppressed"),
        ("withdrew_consent", "no_consent"),
        ("lost_email", "no_recipient"),
    ],
)
def test_a_held_send_is_dropped_when_the_user_changed_meanwhile(change: str, reason: str) -> None:
    listing: dict[str, Suppression] = {}
    policy = Policy(NIGHT, listed=listing.get)
    user = make_user()
    until = held_at_night(policy, user, intent("m1"))
    if change == "unsubscribed":
        user.suppressions["unsubscribe"] = entry("unsubscribe")
    elif change == "listed":
        listing[EMAIL] = entry("complaint")
    elif change == "withdrew_consent":
        user.consent["marketing"] = False
    else:
        del user.traits["email"]
    fx = policy.on_deferred(user, "m1", until, until)
    assert (fx.sends, fx.timers_add, user.deferred) == ([], [], {})
    assert fx.decisions == [("marketing", "drop", reason)]


def test_a_held_send_still_in_quiet_hours_is_held_again() -> None:
    policy = Policy(NIGHT)
    user = make_user()
    until = held_at_night(policy, user, intent("m1"))
    fx = policy.on_deferred(user, "m1", until, until - H)  # the timer fired an hour early
    assert fx.sends == []
    assert fx.timers_add == [TimerOp(until, DEFER_TIMER, "m1")]
    assert user.deferred["m1"]["until"] == until
    assert fx.decisions == [("marketing", "defer", "quiet_hours")]


# ---- goal exits cancel held sends -------------------------------------------------------


def test_a_goal_cancels_only_the_held_sends_of_its_enrollment() -> None:
    policy = Policy(NIGHT)
    user = make_user()
    held = [("a", "cart", "e1"), ("b", "cart", "e1"), ("c", "cart", "e2"), ("d", "winback", "e1")]
    until = held_at_night(policy, user, *(intent(i, "marketing", w, e) for i, w, e in held))
    now = at("2026-01-16 01:00")
    receipt = intent("r", "transactional", workflow="receipt", enrollment="o1")
    fx = Effects(sends=[receipt], goal_exits=[("cart", "e1")])
    policy.review(user, fx, now)
    assert sorted(user.deferred) == ["c", "d"]
    assert fx.timers_del == [TimerOp(until, DEFER_TIMER, "a"), TimerOp(until, DEFER_TIMER, "b")]
    assert fx.sends == [receipt]
    assert fx.decisions[:2] == [("marketing", "drop", "goal_reached")] * 2
    assert [d[:2] + d[5:] for d in user.decisions[-3:-1]] == [
        [now, "a", "drop", "goal_reached", None],
        [now, "b", "drop", "goal_reached", None],
    ]
    assert policy.on_deferred(user, "a", until, until) == Effects()
    assert [s.send_id for s in policy.on_deferred(user, "c", until, until).sends] == ["c"]


# ---- end to end: engine and policy ------------------------------------------------------

CART = {
    "trigger": {"event": "cart_updated"},
    "entry": "always",
    "goals": [{"event": "order_completed"}],
    "steps": [
        {"wait": "1h"},
        {"send": "cart_reminder", "category": "marketing"},
        {"wait": "1d"},
        {"send": "cart_reminder_discount", "category": "marketing"},
    ],
}
WELCOME = {"trigger": {"event": "signup"}, "steps": [{"send": "hi", "category": "transactional"}]}


def automation(listed: Any = lambda address: None, **specs: dict[str, Any]) -> Automation:
    flows = [compile_workflow(name, WorkflowSpec.model_validate(s)) for name, s in specs.items()]
    return Automation(Engine(flows), Policy(NIGHT, listed=listed))


def deliver(
    auto: Automation, user: UserState, event_type: str, now: int, **payload: Any
) -> Effects:
    ev = Event(f"{event_type}@{now}", event_type, user.user_id, now, user.tenant_id, payload)
    apply_event(user, ev)
    return auto.on_event(user, ev, now)


@pytest.mark.parametrize("ordered", [False, True], ids=["no-order", "ordered-while-held"])
def test_a_reminder_held_by_quiet_hours_is_sent_in_the_morning_unless_the_cart_was_bought(
    ordered: bool,
) -> None:
    auto = automation(cart=CART)
    user = make_user()
    wait = deliver(auto, user, "cart_updated", at("2026-01-15 20:30")).timers_add
    assert wait == [TimerOp(at("2026-01-15 21:30"), WAIT_TIMER, "cart")]

    fx = auto.on_timer(user, WAIT_TIMER, "cart", wait[0].due, wait[0].due)
    morning = at("2026-01-16 08:00")
    assert fx.sends == []
    assert fx.decisions == [("marketing", "defer", "quiet_hours")]
    (send_id,) = user.deferred
    deferral = TimerOp(morning, DEFER_TIMER, send_id)
    next_wait = TimerOp(at("2026-01-16 21:30"), WAIT_TIMER, "cart")
    assert fx.timers_add == [next_wait, deferral]

    if ordered:
        fx = deliver(auto, user, "order_completed", at("2026-01-15 23:00"))
        assert fx.goal_exits == [("cart", "cart_updated@" + str(at("2026-01-15 20:30")))]
        assert fx.timers_del == [next_wait, deferral]
        assert fx.decisions == [("marketing", "drop", "goal_reached")]
        assert user.deferred == {}

    fx = auto.on_timer(user, DEFER_TIMER, send_id, morning, morning)
    if ordered:
        assert fx == Effects() and not fx.changed
    else:
        assert [(s.send_id, s.template) for s in fx.sends] == [(send_id, "cart_reminder")]
        assert fx.decisions == [("marketing", "send", "ok")]


def test_a_goal_cancels_a_held_send_that_was_the_last_step() -> None:
    # The enrollment completes when its last send is held; the goal must still apply.
    last_step = {**CART, "steps": CART["steps"][:2]}
    auto = automation(cart=last_step, receipt=WELCOME | {"trigger": {"event": "order_completed"}})
    user = make_user()
    wait = deliver(auto, user, "cart_updated", at("2026-01-15 20:30")).timers_add
    fx = auto.on_timer(user, WAIT_TIMER, "cart", wait[0].due, wait[0].due)
    assert fx.decisions == [("marketing", "defer", "quiet_hours")]
    assert "cart" not in user.enrollments and len(user.deferred) == 1
    (send_id,) = user.deferred

    other = deliver(auto, user, "page_viewed", at("2026-01-15 22:00"))
    assert other.goal_exits == [] and len(user.deferred) == 1

    fx = deliver(auto, user, "order_completed", at("2026-01-15 23:00"))
    assert fx.decisions == [
        ("marketing", "drop", "goal_reached"),
        ("transactional", "send", "ok"),
    ]
    assert user.deferred == {}
    assert fx.timers_del == [TimerOp(at("2026-01-16 08:00"), DEFER_TIMER, send_id)]


def test_the_global_list_is_asked_for_the_normalised_address() -> None:
    asked: list[str] = []

    def listed(address: str) -> Suppression | None:
        asked.append(address)
        return entry("hard_bounce") if address == EMAIL else None

    auto = automation(listed, welcome=WELCOME)
    user = UserState(tenant_id="acme", user_id="alice")
    deliver(auto, user, IDENTIFY, NOON, email="  Alice@Example.COM ")
    fx = deliver(auto, user, "signup", NOON + 1)
    assert asked == [EMAIL]
    assert (fx.sends, fx.decisions) == ([], [("transactional", "drop", "globally_suppressed")])
