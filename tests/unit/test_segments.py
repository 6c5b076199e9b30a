"""Segments: the step that adds and removes them, the condition that tests them, their
place in the user record."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mailstream.core.conditions import ConditionError, compile_condition
from mailstream.core.events import Event
from mailstream.core.user_state import UserState, apply_event
from mailstream.web.board import suppression_summary
from mailstream.web.pages import render_page
from mailstream.workflows.engine import Engine, user_scope
from mailstream.workflows.segments import SegmentChange, apply_change
from mailstream.workflows.spec import WorkflowSpec, compile_workflow

T0 = 1_700_000_000_000


@pytest.mark.parametrize(
    ("before", "change", "after", "changed"),
    [
        pytest.param({}, SegmentChange(add=("vip",)), {"vip": T0}, True, id="add"),
        pytest.param({"vip": 5}, SegmentChange(add=("vip",)), {"vip": 5}, False, id="keeps-since"),
        pytest.param({"vip": 5}, SegmentChange(remove=("vip",)), {}, True, id="remove"),
        pytest.param({}, SegmentChange(remove=("vip",)), {}, False, id="remove-absent"),
        pytest.param(
            {"trial": 5},
            SegmentChange(add=("paid", "vip"), remove=("trial",)),
            {"paid": T0, "vip": T0},
            True,
            id="add-and-remove",
        ),
    ],
)
def test_apply_change(
    before: dict[str, int], change: SegmentChange, after: dict[str, int], changed: bool
) -> None:
    segments = dict(before)
    assert apply_change(segments, change, T0) is changed
    assert segments == after


@pytest.mark.parametrize(
    ("condition", "segments", "want"),
    [
        ({"in_segment": "vip"}, {"vip": T0}, True),
        ({"in_segment": "vip"}, {"beta": T0}, False),
        ({"in_segment": "vip"}, {}, False),
        ({"field": "user.segments.vip", "op": "exists", "value": False}, {}, True),
        ({"field": "user.segments.vip", "op": "exists", "value": False}, {"vip": T0}, False),
        ({"any": [{"in_segment": "a"}, {"in_segment": "b"}]}, {"b": T0}, True),
        ({"all": [{"in_segment": "a"}, {"in_segment": "b"}]}, {"b": T0}, False),
    ],
)
def test_conditions_test_membership(
    condition: dict[str, Any], segments: dict[str, int], want: bool
) -> None:
    user = UserState("acme", "alice", segments=segments)
    scope = {"event": {}, "user": user_scope(user), "context": {}}
    assert compile_condition(condition)(scope) is want


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"in_segment": "vip", "op": "eq"}, "where: 'in_segment' must stand alone"),
        ({"in_segment": "a b"}, "where.in_segment: 'a b' is not a segment name"),
        ({"in_segment": ["vip"]}, "where.in_segment: ['vip'] is not a segment name"),
        ({"all": [{"in_segment": ""}]}, "where.all[0].in_segment: '' is not a segment name"),
    ],
)
def test_a_bad_in_segment_names_the_key(condition: dict[str, Any], message: str) -> None:
    with pytest.raises(ConditionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compile_condition(condition)


def test_segment_steps_change_the_user_and_a_later_branch_sees_it() -> None:
    flow = {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [
            {"segment": {"add": ["buyer", "vip"], "remove": "prospect"}},
            {"branch": {"if": {"in_segment": "vip"}, "else": "exit"}},
            {"send": "vip_welcome"},
            {"segment": {"remove": "vip"}},
        ],
    }
    engine = Engine([compile_workflow("vip", WorkflowSpec.model_validate(flow))])
    user = UserState("acme", "alice", segments={"prospect": 1})
    ev = Event("o1", "order_completed", "alice", T0, "acme", {})
    apply_event(user, ev)
    fx = engine.on_event(user, ev, T0)

    assert [s.template for s in fx.sends] == ["vip_welcome"]
    assert user.segments == {"buyer": T0}
    assert UserState.decode(user.encode()).segments == {"buyer": T0}
    assert user.to_json()["segments"] == {"buyer": T0}


@pytest.mark.parametrize(
    ("segment", "loc", "message"),
    [
        ({}, ("segment",), "needs 'add' or 'remove'"),
        ({"add": [], "remove": []}, ("segment",), "needs 'add' or 'remove'"),
        ({"add": "vip", "remove": ["vip"]}, ("segment",), "'vip' is both added and removed"),
        ({"add": "v i p"}, ("segment", "add", 0), "'v i p' is not a segment name"),
        ({"add": "vip", "join": "x"}, ("segment", "join"), "Extra inputs"),
    ],
)
def test_a_bad_segment_step_names_the_key(
    segment: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    spec = {"trigger": {"event": "a"}, "steps": [{"segment": segment}]}
    with pytest.raises(ValidationError) as info:
        WorkflowSpec.model_validate(spec)
    errors = [e for e in info.value.errors() if e["loc"] == ("steps", 0, "segment", *loc)]
    assert errors, info.value.errors()
    assert message in errors[0]["msg"]


@pytest.mark.parametrize(
    ("segments", "shown"),
    [({"vip": T0, "beta": T0}, 'beta <span class="muted">since 2023-11-14'), ({}, "none")],
)
def test_the_user_page_lists_the_segments(segments: dict[str, int], shown: str) -> None:
    view = {**UserState("acme", "alice", segments=segments).to_json(), "deliveries": []}
    sup = suppression_summary(view)
    page = render_page("user.html", user_id="alice", status=200, u=view, sup=sup, csrf="x")
    row = page[page.index('<tr id="segments">') :].split("</tr>")[0]
    assert shown in row
    assert all(name in row for name in segments)
