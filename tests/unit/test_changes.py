"""Field-change triggers: change detection against the last values seen, from/to, per
entity, bounded memory, and the engine firing only on a change."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mailstream.core.events import Event
from mailstream.core.user_state import UserState, apply_event
from mailstream.workflows.engine import Engine
from mailstream.workflows.field_changes import ChangeWatch, FromTo, compile_changes, remembered
from mailstream.workflows.spec import TriggerSpec, WorkflowSpec, compile_workflow

T0 = 1_700_000_000_000


def fired(trigger: dict[str, Any], payloads: list[dict[str, Any]]) -> list[bool]:
    """Whether the trigger fires for each payload of ``order_updated``, in order."""
    spec = TriggerSpec.model_validate({"event": "order_updated", **trigger})
    assert spec.changed is not None
    rule = compile_changes("order_updated", spec.changed, spec.entity, spec.keep)
    watch = ChangeWatch([rule])
    memory: dict[str, Any] = {}
    return [rule.fires(watch.observe(memory, "order_updated", p)) for p in payloads]


@pytest.mark.parametrize(
    ("trigger", "payloads", "want"),
    [
        pytest.param(
            {"changed": ["status"]},
            [{"status": "pending"}, {"status": "pending"}, {"status": "paid"}],
            [True, False, True],
            id="first-seen-then-no-change-then-change",
        ),
        pytest.param(
            {"changed": "status"},
            [{"status": "a"}, {"other": 1}, {"status": "a"}],
            [True, False, False],
            id="absent-field-tells-nothing",
        ),
        pytest.param(
            {"changed": ["status"]},
            [{"status": None}, {"status": "a"}, {"status": None}, {"status": None}],
            [False, True, True, False],
            id="null-is-unset",
        ),
        pytest.param(
            {"changed": ["status", "payment_state"]},
            [{"status": "a", "payment_state": "x"}, {"status": "a", "payment_state": "y"}],
            [True, True],
            id="any-listed-field",
        ),
        pytest.param(
            {"changed": ["total"]},
            [{"total": 1}, {"total": 1.0}, {"total": True}, {"total": "1"}],
            [True, False, True, True],
            id="one-equals-one-point-zero-not-true-or-text",
        ),
        pytest.param(
            {"changed": ["order.status"]},
            [{"order": {"status": "a"}}, {"order": {"status": "a", "n": 2}}, {"order": {}}],
            [True, False, False],
            id="dotted-path",
        ),
        pytest.param(
            {"changed": ["items"]},
            [{"items": [1, 2]}, {"items": [1, 2]}, {"items": [2, 1]}],
            [True, False, True],
            id="lists-compared-by-digest",
        ),
        pytest.param(
            {"changed": {"status": {"from": "pending", "to": "shipped"}}},
            [{"status": "shipped"}, {"status": "pending"}, {"status": "shipped"}],
            [False, False, True],
            id="from-to-first-seen-does-not-match-from",
        ),
        pytest.param(
            {"changed": {"status": {"to": "shipped"}}},
            [{"status": "shipped"}, {"status": "pending"}, {"status": "shipped"}],
            [True, False, True],
            id="to-only-first-seen-counts",
        ),
        pytest.param(
            {"changed": {"status": {"from": None, "to": "shipped"}}},
            [{"status": "shipped"}, {"status": "pending"}, {"status": "shipped"}],
            [True, False, False],
            id="from-unset-only",
        ),
        pytest.param(
            {"changed": {"status": {"from": ["pending", "paid"]}}},
            [{"status": "pending"}, {"status": "paid"}, {"status": "shipped"}],
            [False, True, True],
            id="from-a-list",
        ),
        pytest.param(
            {"changed": {"status": {"from": ["pending", "paid"]}}},
            [{"status": "new"}, {"status": "pending"}, {"status": "shipped"}],
            [False, False, True],
            id="from-a-list-not-matching-first",
        ),
        pytest.param(
            {"changed": {"status": {"to": None}}},
            [{"status": "a"}, {"status": None}],
            [False, True],
            id="to-unset",
        ),
        pytest.param(
            {"changed": ["status"], "entity": "order_id"},
            [
                {"order_id": "A", "status": "new"},
                {"order_id": "B", "status": "new"},
                {"order_id": "A", "status": "new"},
                {"order_id": "A", "status": "paid"},
                {"order_id": "B", "status": "new"},
            ],
            [True, True, False, True, False],
            id="per-entity",
        ),
        pytest.param(
            {"changed": ["status"], "entity": "order_id"},
            [{"status": "new"}, {"order_id": True, "status": "new"}, {"order_id": 7, "status": 1}],
            [False, False, True],
            id="no-usable-entity-id-never-fires",
        ),
        pytest.param(
            {"changed": ["status"], "entity": "order_id", "keep": 2},
            [
                {"order_id": "A", "status": "new"},
                {"order_id": "B", "status": "new"},
                {"order_id": "C", "status": "new"},
                {"order_id": "B", "status": "new"},  # still remembered
                {"order_id": "A", "status": "new"},  # dropped as the oldest: first seen again
            ],
            [True, True, True, False, True],
            id="bounded-oldest-dropped",
        ),
    ],
)
def test_change_detection(
    trigger: dict[str, Any], payloads: list[dict[str, Any]], want: list[bool]
) -> None:
    assert fired(trigger, payloads) == want


def test_memory_is_bounded_and_the_most_recent_entity_is_last() -> None:
    rule = compile_changes("order_updated", {"status": None}, "order_id", keep=3)
    watch = ChangeWatch([rule])
    memory: dict[str, Any] = {}
    for n in range(100):
        watch.observe(memory, "order_updated", {"order_id": f"o{n}", "status": "new"})
    watch.observe(memory, "order_updated", {"order_id": "o98", "status": "paid"})

    assert list(memory["order_updated/order_id"]) == ["o97", "o99", "o98"]
    assert memory["order_updated/order_id"]["o98"] == {"status": "paid"}


def test_long_and_structured_values_are_kept_as_a_short_digest() -> None:
    long = "x" * 10_000
    assert remembered("short") == "short"
    assert remembered(long) == remembered(long) != remembered(long + "y")
    assert len(str(remembered(long))) < 40
    assert remembered({"a": 1, "b": 2}) == remembered({"b": 2, "a": 1})


def test_two_workflows_watching_the_same_field_both_see_the_change() -> None:
    a = compile_changes("order_updated", {"status": None}, "order_id")
    shipped = FromTo.model_validate({"to": "shipped"})
    b = compile_changes("order_updated", {"status": shipped}, "order_id")
    watch = ChangeWatch([a, b])
    memory: dict[str, Any] = {}
    seen = watch.observe(memory, "order_updated", {"order_id": 1, "status": "pending"})
    assert (a.fires(seen), b.fires(seen)) == (True, False)
    seen = watch.observe(memory, "order_updated", {"order_id": 1, "status": "shipped"})
    assert (a.fires(seen), b.fires(seen)) == (True, True)


# ---- in the engine ----------------------------------------------------------------------


def engine_of(**specs: dict[str, Any]) -> Engine:
    return Engine(
        [compile_workflow(name, WorkflowSpec.model_validate(s)) for name, s in specs.items()]
    )


def run(engine: Engine, user: UserState, n: int, event_type: str, payload: dict[str, Any]) -> Any:
    ev = Event(f"e{n}", event_type, user.user_id, T0 + n, "acme", payload)
    apply_event(user, ev)
    return engine.on_event(user, ev, T0 + n)


def test_the_engine_fires_on_a_change_only_and_remembers_when_where_fails() -> None:
    engine = engine_of(
        shipped={
            "trigger": {
                "event": "order_updated",
                "entity": "order_id",
                "changed": {"status": {"to": "shipped"}},
                "where": {"field": "event.notify", "op": "ne", "value": False},
            },
            "entry": "always",
            "steps": [{"send": "shipped"}],
        }
    )
    user = UserState("acme", "alice")
    sends = []
    for n, payload in enumerate(
        [
            {"order_id": "A", "status": "shipped", "notify": False},  # a change, where fails
            {"order_id": "A", "status": "shipped"},  # where passes, but no change
            {"order_id": "A", "status": "returned"},
            {"order_id": "A", "status": "shipped"},
        ]
    ):
        sends.append([s.template for s in run(engine, user, n, "order_updated", payload).sends])
    assert sends == [[], [], [], ["shipped"]]
    assert user.to_json()["last_seen_fields"] == {
        "order_updated/order_id": {"A": {"status": "shipped"}}
    }
    assert UserState.decode(user.encode()).changes == user.changes


def test_identify_traits_changes() -> None:
    engine = engine_of(
        upgraded={
            "trigger": {"event": "identify", "changed": {"plan": {"from": "free", "to": "pro"}}},
            "entry": "always",
            "steps": [{"send": "thanks_for_upgrading"}],
        }
    )
    user = UserState("acme", "alice")
    got = [
        [s.template for s in run(engine, user, n, "identify", traits).sends]
        for n, traits in enumerate(
            [{"plan": "free"}, {"first_name": "Ada"}, {"plan": "pro"}, {"plan": "pro"}]
        )
    ]
    assert got == [[], [], ["thanks_for_upgrading"], []]


def test_no_change_trigger_means_no_memory() -> None:
    engine = engine_of(w={"trigger": {"event": "order_updated"}, "steps": [{"send": "x"}]})
    user = UserState("acme", "alice")
    run(engine, user, 1, "order_updated", {"status": "a"})
    assert user.changes == {} and "cv" not in user.encode().decode(errors="replace")


@pytest.mark.parametrize(
    ("trigger", "loc", "message"),
    [
        ({"event": "a", "entity": "id"}, (), "'entity' applies with 'changed' only"),
        ({"event": "a", "changed": ["s"], "keep": 5}, (), "'keep' applies with 'entity' only"),
        ({"inactive_for": "1d", "changed": ["s"]}, (), "'changed' applies to event triggers"),
        ({"event": "a", "changed": []}, ("changed",), "at least 1 item"),
        ({"event": "a", "changed": {"s": {"form": "x"}}}, ("changed", "s", "form"), "Extra"),
        ({"event": "a", "changed": {"s": {"to": {"x": 1}}}}, ("changed", "s", "to"), ""),
        ({"event": "a", "changed": ["a..b"]}, ("changed", "a..b", "[key]"), "pattern"),
        ({"event": "a", "entity": "", "changed": ["s"]}, ("entity",), "pattern"),
        (
            {"event": "a", "entity": "id", "changed": ["s"], "keep": 0},
            ("keep",),
            "greater than or equal to 1",
        ),
    ],
)
def test_a_bad_change_trigger_names_the_key(
    trigger: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        TriggerSpec.model_validate(trigger)
    errors = [e for e in info.value.errors() if e["loc"][: len(loc)] == loc]
    assert errors, info.value.errors()
    assert message in errors[0]["msg"]
