"""The workflow engine on a fake clock: steps, entry rules, goals, send ids, inactivity."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mailstream.core.events import Event
from mailstream.core.user_state import UserState, apply_event
from mailstream.workflows.engine import (
    INACTIVITY_TIMER,
    MAX_STEPS_PER_RUN,
    WAIT_TIMER,
    Effects,
    Engine,
    SendIntent,
    TimerOp,
    send_id,
)
from mailstream.workflows.spec import Workflow, WorkflowSpec, compile_workflow

T0 = 1_700_000_000_000
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


# ---- a tiny harness: the caller's side of the engine, on a fake clock ---------------------


def flow(name: str, spec: dict[str, Any]) -> Workflow:
    return compile_workflow(name, WorkflowSpec.model_validate(spec))


def engine_of(**specs: dict[str, Any]) -> Engine:
    return Engine([flow(name, spec) for name, spec in specs.items()])


def new_user(user_id: str = "alice") -> UserState:
    return UserState(tenant_id="acme", user_id=user_id)


def event(
    event_type: str, at: int, payload: dict[str, Any] | None = None, event_id: str | None = None
) -> Event:
    return Event(
        event_id=event_id or f"{event_type}@{at}",
        event_type=event_type,
        user_id="alice",
        timestamp=at,
        tenant_id="acme",
        payload=payload if payload is not None else {},
    )


def deliver(engine: Engine, user: UserState, ev: Event, now: int | None = None) -> Effects:
    """Fold the event into the user's state, then let the engine see it (now defaults to ts)."""
    apply_event(user, ev)
    return engine.on_event(user, ev, ev.timestamp if now is None else now)


def fire(engine: Engine, user: UserState, op: TimerOp, now: int | None = None) -> Effects:
    """A timer comes due (now defaults to its due time)."""
    return engine.on_timer(user, op.kind, op.workflow, op.due, op.due if now is None else now)


def templates(fx: Effects) -> list[str]:
    return [s.template for s in fx.sends]


def wait_timer(due: int, workflow: str) -> TimerOp:
    return TimerOp(due, WAIT_TIMER, workflow)


# ---- send ---------------------------------------------------------------------------------


def test_send_emits_an_intent_with_template_category_priority_and_context() -> None:
    engine = engine_of(
        hello={
            "trigger": {"event": "signup"},
            "steps": [{"send": "welcome", "category": "transactional", "priority": "high"}],
        }
    )
    user = new_user()
    payload = {"plan": "pro", "items": [{"sku": "A1"}]}
    fx = deliver(engine, user, event("signup", T0, payload, "e1"))
    assert fx.sends == [
        SendIntent(
            send_id=send_id(user, "hello", "e1", 1),
            workflow="hello",
            enrollment_id="e1",
            step=0,
            template="welcome",
            category="transactional",
            priority="high",
            context={"plan": "pro", "items": [{"sku": "A1"}]},
            event={"plan": "pro", "items": [{"sku": "A1"}]},
        )
    ]
    assert len(fx.sends[0].send_id) == 32
    assert set(fx.sends[0].send_id) <= set("0123456789abcdef")
    assert fx.counts == [("hello", "enrolled"), ("hello", "completed")]
    assert (fx.timers_add, fx.timers_del, fx.changed) == ([], [], True)
    assert user.enrollments == {}
    assert user.entries == {"hello": T0}


def test_send_defaults_are_marketing_and_normal() -> None:
    engine = engine_of(w={"trigger": {"event": "go"}, "steps": [{"send": "x"}]})
    fx = deliver(engine, new_user(), event("go", T0))
    assert [(s.category, s.priority) for s in fx.sends] == [("marketing", "normal")]


def test_an_event_that_triggers_nothing_has_no_effects() -> None:
    engine = engine_of(w={"trigger": {"event": "go"}, "steps": [{"send": "x"}]})
    user = new_user()
    assert deliver(engine, user, event("page_view", T0)) == Effects()
    assert user.enrollments == {} and user.entries == {}


@pytest.mark.parametrize(
    ("payload", "enrolls"),
    [({"total": 150}, True), ({"total": 50}, False), ({}, False)],
)
def test_trigger_condition_on_the_payload(payload: dict[str, Any], enrolls: bool) -> None:
    engine = engine_of(
        big={
            "trigger": {
                "event": "order",
                "where": {"field": "event.total", "op": "gt", "value": 99},
            },
            "steps": [{"send": "thanks"}],
        }
    )
    fx = deliver(engine, new_user(), event("order", T0, payload))
    assert templates(fx) == (["thanks"] if enrolls else [])


# ---- wait -------------------------------------------------------------------------------

WAIT_THEN_SEND = {"trigger": {"event": "go"}, "steps": [{"wait": "2h"}, {"send": "later"}]}


@pytest.mark.parametrize("lateness", [0, 10 * MINUTE], ids=["on-time", "late"])
def test_wait_sets_a_timer_at_now_plus_duration_and_its_timer_advances(lateness: int) -> None:
    engine = engine_of(w=WAIT_THEN_SEND)
    user = new_user()
    now = T0 + 7  # processing time, not the event's timestamp, starts the wait
    fx = deliver(engine, user, event("go", T0, {"k": "v"}, "e1"), now=now)
    due = now + 2 * HOUR
    assert fx.timers_add == [wait_timer(due, "w")]
    assert (fx.sends, fx.timers_del, fx.counts) == ([], [], [("w", "enrolled")])
    assert user.enrollments["w"]["step"] == 0
    assert user.enrollments["w"]["due"] == due

    fx = fire(engine, user, fx.timers_add[0], now=due + lateness)
    assert templates(fx) == ["later"]
    assert fx.sends[0].context == {"k": "v"}
    assert fx.sends[0].step == 1
    assert fx.counts == [("w", "completed")]
    assert (fx.timers_add, fx.timers_del) == ([], [])
    assert user.enrollments == {}


def test_consecutive_waits_count_from_when_the_timer_fired() -> None:
    engine = engine_of(w={"trigger": {"event": "go"}, "steps": [{"wait": "1h"}, {"wait": "30m"}]})
    user = new_user()
    first = deliver(engine, user, event("go", T0)).timers_add[0]
    assert first == wait_timer(T0 + HOUR, "w")
    fx = fire(engine, user, first, now=T0 + HOUR + 5 * MINUTE)
    assert fx.timers_add == [wait_timer(T0 + HOUR + 35 * MINUTE, "w")]
    assert fx.counts == []
    assert user.enrollments["w"]["step"] == 1
    fx = fire(engine, user, fx.timers_add[0])
    assert fx.counts == [("w", "completed")]


@pytest.mark.parametrize(
    ("kind", "workflow", "due_shift"),
    [
        pytest.param(WAIT_TIMER, "w", -1, id="earlier-due"),
        pytest.param(WAIT_TIMER, "w", +1, id="later-due"),
        pytest.param(WAIT_TIMER, "other", 0, id="workflow-not-enrolled"),
        pytest.param(WAIT_TIMER, "gone", 0, id="workflow-not-configured"),
        pytest.param(INACTIVITY_TIMER, "w", 0, id="wrong-kind"),
    ],
)
def test_a_stale_timer_does_nothing(kind: str, workflow: str, due_shift: int) -> None:
    engine = engine_of(w=WAIT_THEN_SEND, other=WAIT_THEN_SEND | {"trigger": {"event": "x"}})
    user = new_user()
    deliver(engine, user, event("go", T0))
    before = copy.deepcopy(user.enrollments)
    due = T0 + 2 * HOUR
    assert engine.on_timer(user, kind, workflow, due + due_shift, due + 1) == Effects()
    assert user.enrollments == before


def test_a_timer_that_already_fired_does_nothing_the_second_time() -> None:
    engine = engine_of(w={"trigger": {"event": "go"}, "steps": [{"wait": "1h"}, {"wait": "1h"}]})
    user = new_user()
    first = deliver(engine, user, event("go", T0)).timers_add[0]
    assert fire(engine, user, first).timers_add == [wait_timer(T0 + 2 * HOUR, "w")]
    assert fire(engine, user, first) == Effects()
    assert user.enrollments["w"]["due"] == T0 + 2 * HOUR


# ---- wait_for ---------------------------------------------------------------------------

ASK = {
    "trigger": {"event": "go"},
    "steps": [
        {
            "wait_for": {
                "event": "clicked",
                "where": {"field": "event.link", "op": "eq", "value": "buy"},
                "timeout": "3d",
                "on_event": "yes",
                "on_timeout": "no",
            }
        },
        {"id": "yes", "send": "thanks"},
        "exit",
        {"id": "no", "send": "nudge"},
    ],
}


def started_ask() -> tuple[Engine, UserState]:
    engine = engine_of(ask=ASK)
    user = new_user()
    fx = deliver(engine, user, event("go", T0, {"cart": "c1"}, "e1"))
    assert fx.timers_add == [wait_timer(T0 + 3 * DAY, "ask")]
    return engine, user


def test_wait_for_matching_event_goes_to_its_on_event_step() -> None:
    engine, user = started_ask()
    fx = deliver(engine, user, event("clicked", T0 + HOUR, {"link": "buy"}))
    assert fx.timers_del == [wait_timer(T0 + 3 * DAY, "ask")]
    assert fx.timers_add == []
    assert templates(fx) == ["thanks"]
    assert fx.sends[0].step == 1
    assert fx.sends[0].event == {"link": "buy"}
    assert fx.sends[0].context == {"cart": "c1"}
    assert fx.counts == [("ask", "wait_for_matched"), ("ask", "exited")]
    assert user.enrollments == {}
    # The timer the shell may still deliver is stale now.
    assert fire(engine, user, wait_timer(T0 + 3 * DAY, "ask")) == Effects()


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        pytest.param("clicked", {"link": "home"}, id="condition-fails"),
        pytest.param("clicked", {}, id="field-missing"),
        pytest.param("opened", {"link": "buy"}, id="other-event-type"),
    ],
)
def test_wait_for_non_matching_event_does_nothing(event_type: str, payload: dict) -> None:
    engine, user = started_ask()
    before = copy.deepcopy(user.enrollments)
    fx = deliver(engine, user, event(event_type, T0 + HOUR, payload))
    assert (fx.sends, fx.timers_add, fx.timers_del, fx.counts) == ([], [], [], [])
    assert user.enrollments == before


def test_wait_for_timeout_goes_to_its_on_timeout_step_and_clears_nothing() -> None:
    engine, user = started_ask()
    fx = fire(engine, user, wait_timer(T0 + 3 * DAY, "ask"))
    assert templates(fx) == ["nudge"]
    assert fx.sends[0].step == 3
    assert fx.sends[0].event == {}
    assert fx.counts == [("ask", "timed_out"), ("ask", "completed")]
    assert (fx.timers_add, fx.timers_del) == ([], [])
    assert user.enrollments == {}
    # A late match after the timeout neither sends nor clears the spent timer again.
    assert deliver(engine, user, event("clicked", T0 + 4 * DAY, {"link": "buy"})) == Effects()
    assert fire(engine, user, wait_timer(T0 + 3 * DAY, "ask")) == Effects()


def test_wait_for_without_targets_continues_with_the_next_step_either_way() -> None:
    spec = {
        "trigger": {"event": "go"},
        "entry": "always",
        "steps": [{"wait_for": {"event": "clicked", "timeout": "1d"}}, {"send": "next"}],
    }
    engine = engine_of(w=spec)
    user = new_user()
    deliver(engine, user, event("go", T0))
    assert templates(deliver(engine, user, event("clicked", T0 + 1))) == ["next"]
    deliver(engine, user, event("go", T0 + 2))
    assert templates(fire(engine, user, wait_timer(T0 + 2 + DAY, "w"))) == ["next"]


# ---- branch -----------------------------------------------------------------------------


def branching(condition: dict[str, Any]) -> dict[str, Any]:
    return {
        "trigger": {"event": "go"},
        "steps": [
            {"branch": {"if": condition, "then": "yes", "else": "no"}},
            {"id": "yes", "send": "yes"},
            "exit",
            {"id": "no", "send": "no"},
        ],
    }


PRO = {"field": "user.plan", "op": "eq", "value": "pro"}
BIG_CART = {"field": "context.total", "op": "gt", "value": 100}
BIG_EVENT = {"field": "event.total", "op": "gt", "value": 100}


@pytest.mark.parametrize(
    ("condition", "traits", "payload", "want", "outcome"),
    [
        pytest.param(PRO, {"plan": "pro"}, {}, "yes", "exited", id="trait-then"),
        pytest.param(PRO, {"plan": "free"}, {}, "no", "completed", id="trait-else"),
        pytest.param(PRO, {}, {"plan": "pro"}, "no", "completed", id="trait-not-from-payload"),
        pytest.param(BIG_CART, {}, {"total": 150}, "yes", "exited", id="context-then"),
        pytest.param(BIG_CART, {}, {"total": 50}, "no", "completed", id="context-else"),
        pytest.param(BIG_EVENT, {}, {"total": 150}, "yes", "exited", id="event-then"),
        pytest.param(BIG_EVENT, {"total": 150}, {}, "no", "completed", id="event-not-trait"),
        pytest.param(
            {"field": "user.events.go", "op": "eq", "value": 1},
            {},
            {},
            "yes",
            "exited",
            id="counts-include-the-trigger",
        ),
    ],
)
def test_branch_paths(
    condition: dict[str, Any],
    traits: dict[str, Any],
    payload: dict[str, Any],
    want: str,
    outcome: str,
) -> None:
    engine = engine_of(b=branching(condition))
    user = new_user()
    user.traits.update(traits)
    fx = deliver(engine, user, event("go", T0, payload))
    assert templates(fx) == [want]
    assert fx.counts == [("b", "enrolled"), ("b", outcome)]


@pytest.mark.parametrize(("link", "want"), [("buy", "buyer"), ("home", "browser")])
def test_branch_after_wait_for_sees_the_matched_event_and_the_trigger_context(
    link: str, want: str
) -> None:
    spec = {
        "trigger": {"event": "go"},
        "steps": [
            {"wait_for": {"event": "clicked", "timeout": "1d"}},
            {
                "branch": {
                    "if": {
                        "all": [
                            {"field": "event.link", "op": "eq", "value": "buy"},
                            {"field": "context.source", "op": "eq", "value": "ads"},
                        ]
                    },
                    "else": "other",
                }
            },
            {"send": "buyer"},
            "exit",
            {"id": "other", "send": "browser"},
        ],
    }
    engine = engine_of(w=spec)
    user = new_user()
    deliver(engine, user, event("go", T0, {"source": "ads"}))
    fx = deliver(engine, user, event("clicked", T0 + MINUTE, {"link": link}))
    assert templates(fx) == [want]
    assert fx.sends[0].context == {"source": "ads"}
    assert fx.sends[0].event == {"link": link}


@pytest.mark.parametrize(("plan", "want"), [("pro", []), ("free", ["after"])])
def test_branch_to_exit_and_fall_through(plan: str, want: list[str]) -> None:
    spec = {
        "trigger": {"event": "go"},
        "steps": [{"branch": {"if": PRO, "then": "exit"}}, {"send": "after"}],
    }
    engine = engine_of(w=spec)
    user = new_user()
    user.traits["plan"] = plan
    fx = deliver(engine, user, event("go", T0))
    assert templates(fx) == want
    assert fx.counts[-1] == ("w", "exited" if plan == "pro" else "completed")


def test_exit_step_ends_the_enrollment_before_later_steps() -> None:
    engine = engine_of(
        w={"trigger": {"event": "go"}, "steps": [{"send": "a"}, "exit", {"send": "b"}]}
    )
    user = new_user()
    fx = deliver(engine, user, event("go", T0))
    assert templates(fx) == ["a"]
    assert fx.counts == [("w", "enrolled"), ("w", "exited")]
    assert user.enrollments == {}


# ---- update_user ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "update", "want"),
    [
        pytest.param({}, {"set": {"plan": "pro"}}, {"plan": "pro"}, id="set-new"),
        pytest.param({"plan": "free"}, {"set": {"plan": "pro"}}, {"plan": "pro"}, id="set-over"),
        pytest.param({}, {"increment": {"n": 1}}, {"n": 1}, id="increment-missing"),
        pytest.param({"n": 2}, {"increment": {"n": 3}}, {"n": 5}, id="increment-int"),
        pytest.param({"n": 1.5}, {"increment": {"n": 1}}, {"n": 2.5}, id="increment-float"),
        pytest.param({"n": 5}, {"increment": {"n": -2}}, {"n": 3}, id="decrement"),
        pytest.param({"n": "many"}, {"increment": {"n": 2}}, {"n": 2}, id="increment-string"),
        pytest.param({"n": [4]}, {"increment": {"n": 2}}, {"n": 2}, id="increment-list"),
        pytest.param(
            {"n": 1}, {"set": {"n": 10}, "increment": {"n": 1}}, {"n": 11}, id="set-then-increment"
        ),
        pytest.param(
            {"a": 1},
            {"set": {"b": "x"}, "increment": {"c": 2}},
            {"a": 1, "b": "x", "c": 2},
            id="others-kept",
        ),
    ],
)
def test_update_user(traits: dict[str, Any], update: dict[str, Any], want: dict[str, Any]) -> None:
    engine = engine_of(u={"trigger": {"event": "go"}, "steps": [{"update_user": update}]})
    user = new_user()
    user.traits.update(traits)
    fx = deliver(engine, user, event("go", T0))
    assert user.traits == want
    assert fx.counts == [("u", "enrolled"), ("u", "completed")]


def test_increment_of_a_boolean_trait_starts_from_zero() -> None:
    engine = engine_of(
        u={"trigger": {"event": "go"}, "steps": [{"update_user": {"increment": {"n": 1}}}]}
    )
    user = new_user()
    user.traits["n"] = True
    deliver(engine, user, event("go", T0))
    assert user.traits["n"] == 1 and user.traits["n"] is not True


def test_a_branch_sees_a_trait_updated_earlier_in_the_same_run() -> None:
    spec = {
        "trigger": {"event": "go"},
        "steps": [
            {"update_user": {"set": {"plan": "pro"}}},
            {"branch": {"if": PRO, "else": "exit"}},
            {"send": "pro_welcome"},
        ],
    }
    engine = engine_of(w=spec)
    user = new_user()
    assert templates(deliver(engine, user, event("go", T0))) == ["pro_welcome"]


# ---- entry rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "second_at", "enters_again"),
    [
        pytest.param("once", T0 + 1, False, id="once"),
        pytest.param("once", T0 + 365 * DAY, False, id="once-a-year-later"),
        pytest.param("always", T0 + 1, True, id="always"),
        pytest.param({"once_per": "7d"}, T0 + 7 * DAY - 1, False, id="once-per-before"),
        pytest.param({"once_per": "7d"}, T0 + 7 * DAY, True, id="once-per-at"),
        pytest.param({"once_per": "7d"}, T0 + 30 * DAY, True, id="once-per-after"),
    ],
)
def test_entry_rule_after_completion(entry: Any, second_at: int, enters_again: bool) -> None:
    engine = engine_of(w={"trigger": {"event": "go"}, "entry": entry, "steps": [{"send": "hi"}]})
    user = new_user()
    fx = deliver(engine, user, event("go", T0))
    assert fx.counts == [("w", "enrolled"), ("w", "completed")]
    fx = deliver(engine, user, event("go", second_at))
    if enters_again:
        assert fx.counts == [("w", "enrolled"), ("w", "completed")]
        assert templates(fx) == ["hi"]
        assert user.entries == {"w": second_at}
    else:
        assert (fx.counts, fx.sends) == ([], [])
        assert user.entries == {"w": T0}


def test_once_per_counts_from_the_last_entry_not_the_last_attempt() -> None:
    engine = engine_of(
        w={"trigger": {"event": "go"}, "entry": {"once_per": "7d"}, "steps": [{"send": "hi"}]}
    )
    user = new_user()
    assert templates(deliver(engine, user, event("go", T0))) == ["hi"]
    assert templates(deliver(engine, user, event("go", T0 + 3 * DAY))) == []
    assert templates(deliver(engine, user, event("go", T0 + 7 * DAY))) == ["hi"]
    assert templates(deliver(engine, user, event("go", T0 + 13 * DAY))) == []


@pytest.mark.parametrize(
    ("entry", "after_completion"),
    [("once", False), ("always", True), ({"once_per": "1ms"}, True)],
    ids=["once", "always", "once-per"],
)
def test_never_enrolled_twice_at_once(entry: Any, after_completion: bool) -> None:
    engine = engine_of(w=WAIT_THEN_SEND | {"entry": entry})
    user = new_user()
    timer = deliver(engine, user, event("go", T0, event_id="first")).timers_add[0]
    fx = deliver(engine, user, event("go", T0 + 10 * MINUTE, event_id="second"))
    assert (fx.counts, fx.timers_add, fx.sends) == ([], [], [])
    assert user.enrollments["w"]["id"] == "first"
    assert fire(engine, user, timer).counts == [("w", "completed")]
    fx = deliver(engine, user, event("go", T0 + 3 * HOUR, event_id="third"))
    assert (fx.counts == [("w", "enrolled")]) is after_completion
    assert ("w" in user.enrollments) is after_completion


# ---- goals ------------------------------------------------------------------------------

CART = {
    "trigger": {"event": "cart_updated"},
    "entry": "always",
    "goals": [
        {"event": "order_completed", "where": {"field": "event.total", "op": "gt", "value": 0}}
    ],
    "steps": [{"wait": "1h"}, {"send": "reminder"}],
}


def test_goal_during_a_wait_ends_the_enrollment_and_clears_its_timer() -> None:
    engine = engine_of(cart=CART)
    user = new_user()
    timer = deliver(engine, user, event("cart_updated", T0)).timers_add[0]
    fx = deliver(engine, user, event("order_completed", T0 + 30 * MINUTE, {"total": 10}))
    assert fx.timers_del == [wait_timer(T0 + HOUR, "cart")]
    assert (fx.counts, fx.sends, fx.timers_add) == ([("cart", "exited_goal")], [], [])
    assert user.enrollments == {}
    assert fire(engine, user, timer) == Effects()


def test_goal_whose_condition_fails_does_not_end_the_enrollment() -> None:
    engine = engine_of(cart=CART)
    user = new_user()
    timer = deliver(engine, user, event("cart_updated", T0)).timers_add[0]
    fx = deliver(engine, user, event("order_completed", T0 + 30 * MINUTE, {"total": 0}))
    assert (fx.counts, fx.timers_del) == ([], [])
    assert user.enrollments["cart"]["due"] == T0 + HOUR
    assert templates(fire(engine, user, timer)) == ["reminder"]


def test_goal_event_for_a_user_not_enrolled_does_nothing() -> None:
    engine = engine_of(cart=CART)
    user = new_user()
    assert deliver(engine, user, event("order_completed", T0, {"total": 10})) == Effects()
    assert user.enrollments == {} and user.entries == {}


def test_goal_ends_a_wait_for_even_when_the_same_event_would_match_it() -> None:
    spec = {
        "trigger": {"event": "go"},
        "goals": [{"event": "bought"}],
        "steps": [
            {"wait_for": {"event": "bought", "timeout": "1d", "on_event": "thanks"}},
            "exit",
            {"id": "thanks", "send": "thanks"},
        ],
    }
    engine = engine_of(w=spec)
    user = new_user()
    deliver(engine, user, event("go", T0))
    fx = deliver(engine, user, event("bought", T0 + HOUR))
    assert (fx.sends, fx.counts) == ([], [("w", "exited_goal")])
    assert fx.timers_del == [wait_timer(T0 + DAY, "w")]


def test_goal_condition_can_use_the_enrollment_context() -> None:
    spec = {
        "trigger": {"event": "go"},
        "goals": [{"event": "paid", "where": {"field": "context.vip", "op": "eq", "value": True}}],
        "steps": [{"wait": "1h"}, {"send": "x"}],
    }
    engine = engine_of(w=spec)
    vip, plain = new_user("vip"), new_user("plain")
    deliver(engine, vip, event("go", T0, {"vip": True}))
    deliver(engine, plain, event("go", T0, {"vip": False}))
    assert deliver(engine, vip, event("paid", T0 + 1)).counts == [("w", "exited_goal")]
    assert deliver(engine, plain, event("paid", T0 + 1)).counts == []


# ---- send ids ---------------------------------------------------------------------------

JOURNEY = {
    "trigger": {"event": "go"},
    "entry": "always",
    "steps": [{"send": "first"}, {"wait": "1h"}, {"send": "second"}],
}


def run_journey(engine: Engine, user: UserState) -> list[Effects]:
    out = [deliver(engine, user, event("go", T0, {"cart": ["A1"]}, "e1"))]
    out.append(fire(engine, user, out[0].timers_add[0]))
    return out


def test_the_same_sequence_on_copies_of_the_same_state_gives_the_same_send_ids() -> None:
    engine = engine_of(j=JOURNEY)
    start = new_user()
    start.traits["plan"] = "pro"
    one, two = copy.deepcopy(start), copy.deepcopy(start)
    first, second = run_journey(engine, one), run_journey(engine, two)
    assert first == second
    ids = [s.send_id for fx in first for s in fx.sends]
    assert ids == [send_id(start, "j", "e1", 1), send_id(start, "j", "e1", 3)]
    assert len(set(ids)) == 2


def test_a_replay_from_the_stored_state_gives_the_same_send_ids() -> None:
    engine = engine_of(j=JOURNEY)
    user = new_user()
    timer = deliver(engine, user, event("go", T0, {}, "e1")).timers_add[0]
    restored = UserState.decode(user.encode())
    original = fire(engine, user, timer)
    replayed = fire(engine, restored, timer)
    assert [s.send_id for s in replayed.sends] == [s.send_id for s in original.sends]
    assert len(original.sends) == 1


def test_different_enrollments_give_different_send_ids() -> None:
    engine = engine_of(j={"trigger": {"event": "go"}, "entry": "always", "steps": [{"send": "x"}]})
    alice, bob = new_user("alice"), new_user("bob")
    a1 = deliver(engine, alice, event("go", T0, {}, "e1")).sends[0]
    a2 = deliver(engine, alice, event("go", T0 + 1, {}, "e2")).sends[0]
    b1 = deliver(engine, bob, event("go", T0, {}, "e1")).sends[0]
    assert (a1.enrollment_id, a2.enrollment_id) == ("e1", "e2")
    assert len({a1.send_id, a2.send_id, b1.send_id}) == 3


def test_a_step_sending_twice_in_one_enrollment_gives_two_ids() -> None:
    spec = {
        "trigger": {"event": "go"},
        "steps": [
            {"id": "tip", "send": "tip"},
            {"update_user": {"increment": {"tips": 1}}},
            {"wait": "1h"},
            {"branch": {"if": {"field": "user.tips", "op": "lt", "value": 2}, "then": "tip"}},
        ],
    }
    engine = engine_of(loop=spec)
    user = new_user()
    fx1 = deliver(engine, user, event("go", T0, {}, "e1"))
    fx2 = fire(engine, user, fx1.timers_add[0])
    fx3 = fire(engine, user, fx2.timers_add[0])
    sends = fx1.sends + fx2.sends
    assert [(s.step, s.enrollment_id) for s in sends] == [(0, "e1"), (0, "e1")]
    assert sends[0].send_id != sends[1].send_id
    assert (fx3.sends, fx3.counts) == ([], [("loop", "completed")])


# ---- runaway loops ----------------------------------------------------------------------


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([{"id": "a", "branch": {"if": None, "then": "a"}}], id="self-jump"),
        pytest.param(
            [
                {"send": "hello"},
                {"id": "a", "send": "again"},
                {"branch": {"if": None, "then": "a"}},
            ],
            id="send-loop",
        ),
        pytest.param(
            [
                {"id": "a", "update_user": {"increment": {"n": 1}}},
                {"branch": {"if": {"field": "user.n", "op": "gt", "value": 0}, "then": "a"}},
            ],
            id="two-step-loop",
        ),
    ],
)
def test_a_loop_without_a_wait_is_stopped(steps: list[Any]) -> None:
    engine = engine_of(loop={"trigger": {"event": "go"}, "steps": steps})
    user = new_user()
    fx = deliver(engine, user, event("go", T0))
    assert fx.counts == [("loop", "enrolled"), ("loop", "step_limit"), ("loop", "exited")]
    assert (fx.sends, fx.timers_add) == ([], [])
    assert user.enrollments == {}
    if len(steps) == 2:
        assert user.traits["n"] == MAX_STEPS_PER_RUN // 2


# ---- inactivity -------------------------------------------------------------------------


def reengage(entry: Any = "always") -> dict[str, Any]:
    return {
        "trigger": {"inactive_for": "30d"},
        "entry": entry,
        "steps": [{"send": "reengagement"}],
    }


def inactivity_timer(due: int, workflow: str = "re") -> TimerOp:
    return TimerOp(due, INACTIVITY_TIMER, workflow)


def test_an_event_arms_one_inactivity_check_and_later_events_add_none() -> None:
    engine = engine_of(re=reengage())
    user = new_user()
    fx = deliver(engine, user, event("page_view", T0), now=T0 + 5)
    assert fx.timers_add == [inactivity_timer(T0 + 30 * DAY)]
    assert user.inactive_due == {"re": T0 + 30 * DAY}
    for at in (T0 + DAY, T0 + 2 * DAY):
        fx = deliver(engine, user, event("page_view", at))
        assert (fx.timers_add, fx.timers_del) == ([], [])
    assert user.inactive_due == {"re": T0 + 30 * DAY}


def test_inactivity_check_rearms_when_the_user_was_active_then_enrolls_when_not() -> None:
    engine = engine_of(re=reengage())
    user = new_user()
    first = deliver(engine, user, event("page_view", T0)).timers_add[0]
    deliver(engine, user, event("page_view", T0 + 2 * DAY))

    fx = fire(engine, user, first)
    assert fx.timers_add == [inactivity_timer(T0 + 32 * DAY)]
    assert (fx.sends, fx.counts) == ([], [])
    assert user.inactive_due == {"re": T0 + 32 * DAY}
    assert user.enrollments == {}
    assert fire(engine, user, first) == Effects()  # the superseded check is stale

    fx = fire(engine, user, fx.timers_add[0], now=T0 + 32 * DAY + 3)
    assert fx.sends == [
        SendIntent(
            send_id=send_id(user, "re", f"inactive:{T0 + 2 * DAY}", 1),
            workflow="re",
            enrollment_id=f"inactive:{T0 + 2 * DAY}",
            step=0,
            template="reengagement",
            category="marketing",
            priority="normal",
            context={"last_activity": T0 + 2 * DAY},
            event={},
        )
    ]
    assert fx.counts == [("re", "enrolled"), ("re", "completed")]
    assert fx.timers_add == []
    assert user.inactive_due == {}
    assert user.entries == {"re": T0 + 32 * DAY + 3}


def test_each_inactivity_episode_is_its_own_enrollment() -> None:
    engine = engine_of(re=reengage("always"))
    user = new_user()
    first = deliver(engine, user, event("page_view", T0)).timers_add[0]
    one = fire(engine, user, first).sends[0]
    again = deliver(engine, user, event("page_view", T0 + 40 * DAY)).timers_add
    assert again == [inactivity_timer(T0 + 70 * DAY)]
    two = fire(engine, user, again[0]).sends[0]
    assert (one.enrollment_id, two.enrollment_id) == (f"inactive:{T0}", f"inactive:{T0 + 40 * DAY}")
    assert one.send_id != two.send_id


def test_identify_neither_arms_nor_resets_inactivity() -> None:
    engine = engine_of(re=reengage())
    user = new_user()
    fx = deliver(engine, user, event("identify", T0, {"first_name": "Ada"}))
    assert fx == Effects()
    assert (user.inactive_due, user.last_activity) == ({}, None)

    timer = deliver(engine, user, event("page_view", T0 + 1)).timers_add[0]
    fx = deliver(engine, user, event("identify", T0 + 20 * DAY, {"locale": "fr"}))
    assert fx.timers_add == []
    assert user.last_activity == T0 + 1
    assert templates(fire(engine, user, timer)) == ["reengagement"]

    # No check is pending now; an identify must not start one (only activity does).
    assert user.inactive_due == {}
    fx = deliver(engine, user, event("identify", T0 + 31 * DAY, {"locale": "de"}))
    assert fx == Effects()
    assert user.inactive_due == {}
    fx = deliver(engine, user, event("page_view", T0 + 32 * DAY))
    assert fx.timers_add == [inactivity_timer(T0 + 62 * DAY)]


@pytest.mark.parametrize(
    ("entry", "rearmed"),
    [("once", False), ("always", True)],
)
def test_after_entering_an_inactivity_workflow(entry: str, rearmed: bool) -> None:
    engine = engine_of(re=reengage(entry))
    user = new_user()
    timer = deliver(engine, user, event("page_view", T0)).timers_add[0]
    assert templates(fire(engine, user, timer)) == ["reengagement"]
    fx = deliver(engine, user, event("page_view", T0 + 40 * DAY))
    assert fx.timers_add == ([inactivity_timer(T0 + 70 * DAY)] if rearmed else [])
    assert user.inactive_due == ({"re": T0 + 70 * DAY} if rearmed else {})


def test_inactivity_check_blocked_by_once_per_is_rearmed() -> None:
    engine = engine_of(re=reengage({"once_per": "90d"}))
    user = new_user()
    first = deliver(engine, user, event("page_view", T0)).timers_add[0]
    assert templates(fire(engine, user, first)) == ["reengagement"]  # entered at T0+30d
    check = deliver(engine, user, event("page_view", T0 + 40 * DAY)).timers_add[0]
    fx = fire(engine, user, check)  # T0+70d: inactive again, but within 90d of the entry
    assert fx.sends == []
    # The user may never send another event: something must still be pending for them.
    assert [op.kind for op in fx.timers_add] == [INACTIVITY_TIMER]
    assert fx.timers_add[0].due > T0 + 70 * DAY


# ---- configuration changes --------------------------------------------------------------


def test_an_enrollment_in_a_workflow_no_longer_configured_is_dropped() -> None:
    before = engine_of(old=WAIT_THEN_SEND, keep=WAIT_THEN_SEND | {"trigger": {"event": "k"}})
    user = new_user()
    timer = deliver(before, user, event("go", T0)).timers_add[0]
    after = engine_of(keep=WAIT_THEN_SEND | {"trigger": {"event": "k"}})
    fx = deliver(after, user, event("page_view", T0 + MINUTE))
    assert fx.counts == [("old", "dropped")]
    assert user.enrollments == {}
    assert fire(after, user, timer) == Effects()


def test_enrollments_are_dropped_when_no_workflow_is_configured() -> None:
    user = new_user()
    deliver(engine_of(old=WAIT_THEN_SEND), user, event("go", T0))
    fx = deliver(Engine([]), user, event("page_view", T0 + MINUTE))
    assert fx.counts == [("old", "dropped")]
    assert user.enrollments == {}


# ---- the shipped journeys ---------------------------------------------------------------

WELCOME_BY_BRANCH = {
    "trigger": {"event": "signup"},
    "entry": "once",
    "steps": [
        {"send": "welcome", "category": "transactional"},
        {"wait": "2d"},
        {"branch": {"if": {"field": "user.events.activated", "op": "exists"}, "then": "exit"}},
        {"send": "tips", "category": "marketing"},
    ],
}
WELCOME_BY_GOAL = {
    "trigger": {"event": "signup"},
    "entry": "once",
    "goals": [{"event": "activated"}],
    "steps": [
        {"send": "welcome", "category": "transactional"},
        {"wait": "2d"},
        {"send": "tips", "category": "marketing"},
    ],
}
ABANDONED_CART = {
    "trigger": {"event": "cart_updated", "where": {"field": "event.items", "op": "exists"}},
    "entry": "always",
    "goals": [{"event": "order_completed"}],
    "steps": [
        {"wait": "1h"},
        {"send": "cart_reminder", "category": "marketing"},
        {"wait": "24h"},
        {"send": "cart_reminder_discount", "category": "marketing"},
    ],
}
ORDER_RECEIPT = {
    "trigger": {"event": "order_completed"},
    "entry": "always",
    "steps": [{"send": "order_receipt", "category": "transactional", "priority": "high"}],
}
REENGAGEMENT = {
    "trigger": {"inactive_for": "30d"},
    "entry": {"once_per": "90d"},
    "steps": [{"send": "reengagement", "category": "marketing"}],
}
ITEMS = [{"sku": "A1", "name": "Shoe", "qty": 1}, {"sku": "B2", "name": "Sock", "qty": 3}]


@pytest.mark.parametrize("spec", [WELCOME_BY_BRANCH, WELCOME_BY_GOAL], ids=["branch", "goal"])
@pytest.mark.parametrize("activated", [False, True], ids=["not-activated", "activated"])
def test_welcome_series(spec: dict[str, Any], activated: bool) -> None:
    engine = engine_of(welcome=spec)
    user = new_user()
    fx = deliver(engine, user, event("signup", T0))
    assert [(s.template, s.category) for s in fx.sends] == [("welcome", "transactional")]
    assert fx.timers_add == [wait_timer(T0 + 2 * DAY, "welcome")]
    sent = templates(fx)
    if activated:
        fx = deliver(engine, user, event("activated", T0 + DAY))
        if spec is WELCOME_BY_GOAL:
            assert fx.counts == [("welcome", "exited_goal")]
            assert fx.timers_del == [wait_timer(T0 + 2 * DAY, "welcome")]
        else:
            assert fx.counts == []
    fx = fire(engine, user, wait_timer(T0 + 2 * DAY, "welcome"))
    sent += templates(fx)
    if not activated:
        assert fx.counts == [("welcome", "completed")]
        assert [(s.template, s.category) for s in fx.sends] == [("tips", "marketing")]
    assert sent == (["welcome"] if activated else ["welcome", "tips"])
    assert user.enrollments == {}
    # entry: once — signing up again does not restart the series.
    assert deliver(engine, user, event("signup", T0 + 10 * DAY)).sends == []


def test_abandoned_cart_sends_both_reminders_with_the_cart_items() -> None:
    engine = engine_of(abandoned_cart=ABANDONED_CART)
    user = new_user()
    fx = deliver(engine, user, event("cart_updated", T0, {"items": ITEMS}))
    assert (fx.sends, fx.timers_add) == ([], [wait_timer(T0 + HOUR, "abandoned_cart")])
    fx = fire(engine, user, fx.timers_add[0])
    assert templates(fx) == ["cart_reminder"]
    assert fx.sends[0].context == {"items": ITEMS}
    assert fx.timers_add == [wait_timer(T0 + 25 * HOUR, "abandoned_cart")]
    fx = fire(engine, user, fx.timers_add[0])
    assert templates(fx) == ["cart_reminder_discount"]
    assert fx.sends[0].context == {"items": ITEMS}
    assert fx.counts == [("abandoned_cart", "completed")]


@pytest.mark.parametrize(
    ("order_at", "want"),
    [
        pytest.param(T0 + 30 * MINUTE, [], id="ordered-during-first-wait"),
        pytest.param(T0 + 2 * HOUR, ["cart_reminder"], id="ordered-after-first-reminder"),
    ],
)
def test_abandoned_cart_completed_by_an_order(order_at: int, want: list[str]) -> None:
    engine = engine_of(abandoned_cart=ABANDONED_CART)
    user = new_user()
    sent: list[str] = []
    pending = deliver(engine, user, event("cart_updated", T0, {"items": ITEMS})).timers_add
    if order_at > T0 + HOUR:
        fx = fire(engine, user, pending[0])
        sent += templates(fx)
        pending = fx.timers_add
    fx = deliver(engine, user, event("order_completed", order_at, {"order_id": "o1"}))
    assert fx.counts == [("abandoned_cart", "exited_goal")]
    assert fx.timers_del == pending
    for op in (
        wait_timer(T0 + HOUR, "abandoned_cart"),
        wait_timer(T0 + 25 * HOUR, "abandoned_cart"),
    ):
        sent += templates(fire(engine, user, op))
    assert sent == want


def test_abandoned_cart_needs_items() -> None:
    engine = engine_of(abandoned_cart=ABANDONED_CART)
    assert deliver(engine, new_user(), event("cart_updated", T0, {"total": 0})) == Effects()


def test_order_receipt_is_sent_at_once_for_every_order() -> None:
    engine = engine_of(order_receipt=ORDER_RECEIPT)
    user = new_user()
    receipts = []
    for n, at in enumerate((T0, T0 + MINUTE), start=1):
        fx = deliver(engine, user, event("order_completed", at, {"order_id": f"o{n}"}, f"ev{n}"))
        assert fx.counts == [("order_receipt", "enrolled"), ("order_receipt", "completed")]
        assert fx.timers_add == []
        receipts += fx.sends
    assert [(s.template, s.category, s.priority) for s in receipts] == [
        ("order_receipt", "transactional", "high")
    ] * 2
    assert [s.context for s in receipts] == [{"order_id": "o1"}, {"order_id": "o2"}]
    assert receipts[0].send_id != receipts[1].send_id


def test_reengagement_after_30_days_and_again_after_90() -> None:
    engine = engine_of(reengagement=REENGAGEMENT)
    user = new_user()
    timer = deliver(engine, user, event("page_view", T0)).timers_add[0]
    assert timer == inactivity_timer(T0 + 30 * DAY, "reengagement")
    fx = fire(engine, user, timer)
    assert [(s.template, s.enrollment_id) for s in fx.sends] == [("reengagement", f"inactive:{T0}")]
    timer = deliver(engine, user, event("page_view", T0 + 100 * DAY)).timers_add[0]
    fx = fire(engine, user, timer)
    assert [(s.template, s.enrollment_id) for s in fx.sends] == [
        ("reengagement", f"inactive:{T0 + 100 * DAY}")
    ]


def test_all_four_journeys_together() -> None:
    engine = engine_of(
        welcome=WELCOME_BY_BRANCH,
        abandoned_cart=ABANDONED_CART,
        order_receipt=ORDER_RECEIPT,
        reengagement=REENGAGEMENT,
    )
    user = new_user()
    fx = deliver(engine, user, event("signup", T0))
    assert templates(fx) == ["welcome"]
    assert fx.timers_add == [
        wait_timer(T0 + 2 * DAY, "welcome"),
        inactivity_timer(T0 + 30 * DAY, "reengagement"),
    ]
    fx = deliver(engine, user, event("cart_updated", T0 + MINUTE, {"items": ITEMS}))
    assert fx.timers_add == [wait_timer(T0 + MINUTE + HOUR, "abandoned_cart")]
    fx = deliver(engine, user, event("order_completed", T0 + 30 * MINUTE, {"order_id": "o1"}))
    assert templates(fx) == ["order_receipt"]
    assert fx.counts == [
        ("abandoned_cart", "exited_goal"),
        ("order_receipt", "enrolled"),
        ("order_receipt", "completed"),
    ]
    assert fx.timers_del == [wait_timer(T0 + MINUTE + HOUR, "abandoned_cart")]
    assert list(user.enrollments) == ["welcome"]


def test_the_trigger_again_while_enrolled_refreshes_the_context_not_the_position() -> None:
    engine = engine_of(cart=CART)
    user = new_user()
    first = deliver(engine, user, event("cart_updated", T0, {"items": ["mug"]}))
    (wait,) = first.timers_add
    again = deliver(engine, user, event("cart_updated", T0 + MINUTE, {"items": ["mug", "hat"]}))
    assert again.timers_add == [] and again.timers_del == [], "the wait goes on as it was"
    assert ("cart", "context_refreshed") in again.counts
    assert user.enrollments["cart"]["ctx"] == {"items": ["mug", "hat"]}
    reminder = fire(engine, user, wait)
    assert [s.context for s in reminder.sends] == [{"items": ["mug", "hat"]}]
    same = deliver(engine, user, event("cart_updated", T0 + 2 * HOUR, {"items": ["mug", "hat"]}))
    assert ("cart", "context_refreshed") not in same.counts
