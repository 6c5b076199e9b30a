"""The workflow schema: valid specs compile to runnable steps, invalid ones name the bad key."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from mailstream.workflows.spec import END, EXIT_INDEX, WorkflowSpec, compile_workflow

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

EVERY_KIND: dict[str, Any] = {
    "trigger": {"event": "signup", "where": {"field": "event.plan", "op": "eq", "value": "pro"}},
    "entry": {"once_per": "7d"},
    "goals": [{"event": "activated"}, {"event": "unsubscribed", "where": None}],
    "steps": [
        {"id": "hello", "send": "welcome", "category": "transactional", "priority": "high"},
        {"wait": "2d"},
        {
            "id": "ask",
            "wait_for": {
                "event": "clicked",
                "where": {"field": "event.link", "op": "eq", "value": "buy"},
                "timeout": "1h30m",
                "on_event": "thanks",
                "on_timeout": "check",
            },
        },
        {"id": "thanks", "send": "thanks"},
        "exit",
        {
            "id": "check",
            "branch": {
                "if": {"field": "user.plan", "op": "eq", "value": "pro"},
                "then": "bump",
                "else": "exit",
            },
        },
        {"id": "bump", "update_user": {"set": {"nudged": True}, "increment": {"nudges": 1}}},
        {"send": "tips"},
        {"id": "bye", "exit": True},
    ],
}


def compiled(spec: dict[str, Any], name: str = "flow") -> Any:
    return compile_workflow(name, WorkflowSpec.model_validate(spec))


def test_every_step_kind_compiles() -> None:
    flow = compiled(EVERY_KIND)
    assert flow.name == "flow"
    assert flow.trigger_event == "signup"
    assert flow.trigger({"event": {"plan": "pro"}}) is True
    assert flow.trigger({"event": {"plan": "free"}}) is False
    assert flow.inactive_for_ms is None
    assert (flow.entry, flow.once_per_ms) == ("once_per", 7 * DAY_MS)
    assert [g[0] for g in flow.goals] == ["activated", "unsubscribed"]
    assert [(s.kind, s.index, s.next) for s in flow.steps] == [
        ("send", 0, 1),
        ("wait", 1, 2),
        ("wait_for", 2, 3),
        ("send", 3, 4),
        ("exit", 4, EXIT_INDEX),
        ("branch", 5, 6),
        ("update_user", 6, 7),
        ("send", 7, 8),
        ("exit", 8, EXIT_INDEX),
    ]
    send, wait, wait_for, thanks, _, branch, update, tips, _ = flow.steps
    assert (send.template, send.category, send.priority) == ("welcome", "transactional", "high")
    assert (tips.template, tips.category, tips.priority) == ("tips", "marketing", "normal")
    assert thanks.template == "thanks"
    assert wait.duration_ms == 2 * DAY_MS
    assert wait_for.event == "clicked"
    assert wait_for.duration_ms == HOUR_MS + 30 * 60_000
    assert (wait_for.on_event, wait_for.on_timeout) == (3, 5)
    assert wait_for.condition({"event": {"link": "buy"}}) is True
    assert wait_for.condition({"event": {"link": "home"}}) is False
    assert (branch.then, branch.otherwise) == (6, EXIT_INDEX)
    assert branch.condition({"user": {"plan": "pro"}}) is True
    assert update.set == {"nudged": True}
    assert update.increment == {"nudges": 1}


@pytest.mark.parametrize(
    ("entry", "want"),
    [
        pytest.param(None, ("once", 0), id="default-once"),
        pytest.param("once", ("once", 0), id="once"),
        pytest.param("always", ("always", 0), id="always"),
        pytest.param({"once_per": "7d"}, ("once_per", 7 * DAY_MS), id="once-per-7d"),
        pytest.param({"once_per": "12h"}, ("once_per", 12 * HOUR_MS), id="once-per-12h"),
        pytest.param({"once_per": 90}, ("once_per", 90_000), id="once-per-seconds"),
    ],
)
def test_entry_rules(entry: Any, want: tuple[str, int]) -> None:
    spec: dict[str, Any] = {"trigger": {"event": "a"}, "steps": [{"send": "x"}]}
    if entry is not None:
        spec["entry"] = entry
    flow = compiled(spec)
    assert (flow.entry, flow.once_per_ms) == want


def test_exit_shorthand_string_is_an_exit_step() -> None:
    flow = compiled({"trigger": {"event": "a"}, "steps": [{"send": "x"}, "exit", {"send": "y"}]})
    assert [(s.kind, s.next) for s in flow.steps] == [
        ("send", 1),
        ("exit", EXIT_INDEX),
        ("send", END),
    ]


def test_jumps_by_id_and_defaults_to_the_next_step() -> None:
    flow = compiled(
        {
            "trigger": {"event": "a"},
            "steps": [
                {"id": "top", "send": "x"},
                {"branch": {"if": {"field": "user.n", "op": "lt", "value": 3}, "then": "top"}},
                {"wait_for": {"event": "b", "timeout": "1d", "on_timeout": "top"}},
                {"id": "last", "branch": {"if": None, "else": "last"}},
            ],
        }
    )
    branch, wait_for, last = flow.steps[1:]
    assert (branch.then, branch.otherwise) == (0, 2)
    assert (wait_for.on_event, wait_for.on_timeout) == (3, 0)
    assert (last.then, last.otherwise, last.next) == (END, 3, END)


def test_inactivity_trigger() -> None:
    flow = compiled({"trigger": {"inactive_for": "30d"}, "steps": [{"send": "come_back"}]})
    assert flow.trigger_event is None
    assert flow.inactive_for_ms == 30 * DAY_MS


def test_spec_accepts_python_names_for_if_and_else() -> None:
    flow = compiled(
        {
            "trigger": {"event": "a"},
            "steps": [{"id": "x", "branch": {"if_": None, "then": "x", "else_": "exit"}}],
        }
    )
    assert (flow.steps[0].then, flow.steps[0].otherwise) == (0, EXIT_INDEX)


# ---- invalid specs: the error's location and message point at the bad key ----------------

BASE: dict[str, Any] = {"trigger": {"event": "a"}, "steps": [{"send": "x"}]}
STEP_KIND = "a step needs exactly one of: send, wait, wait_for, branch, update_user, exit"


def with_changes(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec.update(changes)
    return spec


INVALID = [
    pytest.param(
        with_changes(steps=[{"send": "x"}, {"sned": "y"}]),
        ("steps", 1),
        "step_kind",
        STEP_KIND,
        id="unknown-step-kind",
    ),
    pytest.param(
        with_changes(steps=[{"send": "x", "wait": "1h"}]),
        ("steps", 0),
        "step_kind",
        STEP_KIND,
        id="two-kinds-in-one-step",
    ),
    pytest.param(
        with_changes(steps=["stop"]), ("steps", 0), "step_kind", STEP_KIND, id="unknown-shorthand"
    ),
    pytest.param(
        with_changes(steps=[{"send": "x", "category": "promo"}]),
        ("steps", 0, "send", "category"),
        "literal_error",
        "'transactional' or 'marketing'",
        id="bad-category",
    ),
    pytest.param(
        with_changes(steps=[{"send": "x", "priority": "urgent"}]),
        ("steps", 0, "send", "priority"),
        "literal_error",
        "'high', 'normal' or 'low'",
        id="bad-priority",
    ),
    pytest.param(
        with_changes(steps=[{"send": ""}]),
        ("steps", 0, "send", "send"),
        "string_too_short",
        "at least 1 character",
        id="empty-template",
    ),
    pytest.param(
        with_changes(steps=[{"send": "x", "templat": "y"}]),
        ("steps", 0, "send", "templat"),
        "extra_forbidden",
        "Extra inputs",
        id="extra-key-in-step",
    ),
    pytest.param(
        with_changes(steps=[{"exit": False}]),
        ("steps", 0, "exit", "exit"),
        "literal_error",
        "True",
        id="exit-false",
    ),
    pytest.param(
        with_changes(steps=[{"send": "x"}, {"wait": "soon"}]),
        ("steps", 1, "wait", "wait"),
        "value_error",
        "'soon' is not a duration",
        id="bad-duration",
    ),
    pytest.param(
        with_changes(steps=[{"wait_for": {"event": "b", "on_event": "x"}}]),
        ("steps", 0, "wait_for", "wait_for", "timeout"),
        "missing",
        "Field required",
        id="wait-for-without-timeout",
    ),
    pytest.param(
        with_changes(steps=[{"id": "a", "send": "x"}, {"branch": {"if": None, "then": "nowhere"}}]),
        (),
        "value_error",
        "steps[1].branch.then: no step with id 'nowhere' (ids: a; or 'exit')",
        id="unknown-branch-target",
    ),
    pytest.param(
        with_changes(steps=[{"branch": {"if": None, "else": "nowhere"}}]),
        (),
        "value_error",
        "steps[0].branch.else: no step with id 'nowhere' (ids: none; or 'exit')",
        id="unknown-else-target",
    ),
    pytest.param(
        with_changes(steps=[{"wait_for": {"event": "b", "timeout": "1h", "on_timeout": "later"}}]),
        (),
        "value_error",
        "steps[0].wait_for.on_timeout: no step with id 'later'",
        id="unknown-timeout-target",
    ),
    pytest.param(
        with_changes(
            steps=[{"id": "a", "wait_for": {"event": "b", "timeout": "1h", "on_event": "A"}}]
        ),
        (),
        "value_error",
        "steps[0].wait_for.on_event: no step with id 'A'",
        id="ids-are-case-sensitive",
    ),
    pytest.param(
        with_changes(
            steps=[{"id": "a", "send": "x"}, {"id": "b", "send": "y"}, {"id": "a", "send": "z"}]
        ),
        (),
        "value_error",
        "step ids must be unique: 'a' is used twice",
        id="duplicate-step-ids",
    ),
    pytest.param(
        with_changes(steps=[{"send": "x"}, {"id": "exit", "send": "y"}]),
        (),
        "value_error",
        "steps[1].id: 'exit' is reserved",
        id="step-id-exit-is-reserved",
    ),
    pytest.param(
        with_changes(trigger={"event": "a", "inactive_for": "30d"}),
        ("trigger",),
        "value_error",
        "a trigger needs exactly one of 'event' or 'inactive_for'",
        id="trigger-with-both",
    ),
    pytest.param(
        with_changes(trigger={}),
        ("trigger",),
        "value_error",
        "a trigger needs exactly one of 'event' or 'inactive_for'",
        id="trigger-with-neither",
    ),
    pytest.param(
        with_changes(trigger={"inactive_for": "30d", "where": {"field": "user.a", "op": "exists"}}),
        ("trigger",),
        "value_error",
        "'where' applies to event triggers only",
        id="inactivity-trigger-with-where",
    ),
    pytest.param(
        with_changes(trigger={"event": "a", "where": {"all": []}}),
        ("trigger", "where"),
        "value_error",
        "where.all: expected a non-empty list of conditions",
        id="bad-trigger-condition",
    ),
    pytest.param(
        with_changes(steps=[]), ("steps",), "too_short", "at least 1 item", id="empty-steps"
    ),
    pytest.param(
        with_changes(
            steps=[
                {"send": "x"},
                {
                    "wait_for": {
                        "event": "b",
                        "timeout": "1h",
                        "where": {"any": [{"field": "event.a", "op": "like", "value": 1}]},
                    }
                },
            ]
        ),
        ("steps", 1, "wait_for", "wait_for", "where"),
        "value_error",
        "where.any[0].op: 'like' is not one of",
        id="bad-condition-in-wait-for",
    ),
    pytest.param(
        with_changes(steps=[{"branch": {"if": {"field": "event.a", "op": "in", "value": 3}}}]),
        ("steps", 0, "branch", "branch", "if"),
        "value_error",
        "where.value: op 'in' needs a list",
        id="bad-condition-in-branch",
    ),
    pytest.param(
        with_changes(goals=[{"event": "g"}, {"event": "h", "where": {"field": "x.a", "op": "eq"}}]),
        ("goals", 1, "where"),
        "value_error",
        "where.field: 'x.a' must start with event., user. or context.",
        id="bad-goal-condition",
    ),
    pytest.param(
        with_changes(entry="twice"),
        ("entry", "literal['once','always']"),
        "literal_error",
        "'once' or 'always'",
        id="unknown-entry",
    ),
    pytest.param(
        with_changes(steps=[{"update_user": {"increment": {"n": "one"}}}]),
        ("steps", 0, "update_user", "update_user", "increment", "n", "int"),
        "int_type",
        "valid integer",
        id="non-numeric-increment",
    ),
    pytest.param(
        with_changes(triggers={"event": "a"}),
        ("triggers",),
        "extra_forbidden",
        "Extra inputs",
        id="extra-top-level-key",
    ),
]


@pytest.mark.parametrize(("spec", "loc", "kind", "message"), INVALID)
def test_invalid_spec_points_at_the_bad_key(
    spec: dict[str, Any], loc: tuple[Any, ...], kind: str, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        WorkflowSpec.model_validate(spec)
    errors = info.value.errors()
    matching = [e for e in errors if e["loc"] == loc]
    assert matching, f"no error at {loc}: {[e['loc'] for e in errors]}"
    assert matching[0]["type"] == kind
    assert message in matching[0]["msg"]


def test_the_base_of_the_invalid_cases_is_valid() -> None:
    # The baseline the invalid cases are variations of is itself valid.
    assert compiled(BASE).steps[0].template == "x"


def test_entry_mapping_without_once_per_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        WorkflowSpec.model_validate(with_changes(entry={}))
    assert info.value.errors()[0]["loc"][0] == "entry"


def test_digest_segment_and_change_trigger_compile() -> None:
    flow = compiled(
        {
            "trigger": {
                "event": "order_updated",
                "entity": "order.id",
                "keep": 10,
                "changed": {"status": {"from": "pending", "to": ["shipped", None]}, "total": None},
            },
            "steps": [
                {"segment": {"add": "buyer", "remove": ["prospect", "trial"]}},
                {
                    "digest": {
                        "event": "comment_added",
                        "where": {"field": "event.spam", "op": "ne", "value": True},
                        "window": "1h",
                        "template": "comments_digest",
                        "category": "transactional",
                        "fields": ["text"],
                    }
                },
            ],
        }
    )
    segment, digest = flow.steps
    assert (segment.kind, segment.rule.add, segment.rule.remove) == (
        "segment",
        ("buyer",),
        ("prospect", "trial"),
    )
    assert (digest.kind, digest.template, digest.category, digest.next) == (
        "digest",
        "comments_digest",
        "transactional",
        END,
    )
    rule = digest.rule
    assert (rule.events, rule.window_ms, rule.max_items, rule.fields) == (
        frozenset({"comment_added"}),
        HOUR_MS,
        20,
        ("text",),
    )
    assert rule.condition({"event": {"spam": True}}) is False
    changed = flow.changed
    assert (changed.event_type, changed.entity, changed.keep) == (
        "order_updated",
        ("order", "id"),
        10,
    )
    assert [(f.name, f.before, f.after) for f in changed.fields] == [
        ("status", frozenset({("s", "pending")}), frozenset({("s", "shipped"), None})),
        ("total", None, None),
    ]
    assert compiled(BASE).changed is None
