"""Conditions: every operator, paths and roots, compile errors, cheapest-first evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from mailstream.core.conditions import ConditionError, compile_condition

SCOPE: dict[str, Any] = {
    "event": {
        "total": 120,
        "ratio": 0.5,
        "name": "Ada",
        "tags": ["vip", "new"],
        "meta": {"source": "ads"},
        "items": [{"name": "shoe", "qty": 2}, {"name": "sock", "qty": 5}],
        "flag": True,
        "nothing": None,
        "digits": "5",
    },
    "user": {"plan": "pro", "age": 30, "events": {"signup": 1}},
    "context": {"cart_id": "c1", "items": [{"sku": "A1"}]},
}


def check(spec: Any, scope: Mapping[str, Any] = SCOPE) -> bool:
    return compile_condition(spec)(scope)


def leaf(field: str, op: str, *value: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"field": field, "op": op}
    if value:
        spec["value"] = value[0]
    return spec


# ---- every operator: a match, a non-match and a missing field ----------------------------

OPERATOR_CASES = [
    # (op, field, value, expected)
    ("eq", "event.total", 120, True),
    ("eq", "event.total", 121, False),
    ("eq", "event.missing", 120, False),
    ("ne", "event.total", 121, True),
    ("ne", "event.total", 120, False),
    ("ne", "event.missing", 120, True),
    ("gt", "event.total", 119, True),
    ("gt", "event.total", 120, False),
    ("gt", "event.missing", 0, False),
    ("gte", "event.total", 120, True),
    ("gte", "event.total", 121, False),
    ("gte", "event.missing", 0, False),
    ("lt", "event.total", 121, True),
    ("lt", "event.total", 120, False),
    ("lt", "event.missing", 1000, False),
    ("lte", "event.total", 120, True),
    ("lte", "event.total", 119, False),
    ("lte", "event.missing", 1000, False),
    ("in", "event.name", ["Ada", "Bob"], True),
    ("in", "event.name", ["Bob"], False),
    ("in", "event.missing", ["Ada"], False),
    ("not_in", "event.name", ["Bob"], True),
    ("not_in", "event.name", ["Ada", "Bob"], False),
    ("not_in", "event.missing", ["Ada"], True),
    ("contains", "event.tags", "vip", True),
    ("contains", "event.tags", "old", False),
    ("contains", "event.missing", "vip", False),
    ("exists", "event.total", True, True),
    ("exists", "event.nothing", True, False),
    ("exists", "event.missing", True, False),
    ("exists", "event.total", False, False),
    ("exists", "event.missing", False, True),
]


@pytest.mark.parametrize(
    ("op", "field", "value", "expected"),
    OPERATOR_CASES,
    ids=[f"{op}-{field.split('.')[1]}-{value!r}" for op, field, value, _ in OPERATOR_CASES],
)
def test_operator(op: str, field: str, value: Any, expected: bool) -> None:
    assert check(leaf(field, op, value)) is expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [("event.total", True), ("event.missing", False), ("event.nothing", False)],
)
def test_exists_without_a_value_means_exists_true(field: str, expected: bool) -> None:
    assert check(leaf(field, "exists")) is expected


def test_op_defaults_to_eq() -> None:
    assert check({"field": "event.name", "value": "Ada"}) is True
    assert check({"field": "event.name", "value": "Bob"}) is False


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(leaf("event.name", "gt", "Aaa"), True, id="str-gt-str"),
        pytest.param(leaf("event.name", "lt", "Aaa"), False, id="str-lt-str"),
        pytest.param(leaf("event.ratio", "lt", 1), True, id="float-lt-int"),
        pytest.param(leaf("event.total", "gt", 119.5), True, id="int-gt-float"),
        pytest.param(leaf("event.digits", "gt", 3), False, id="numeric-string-vs-number"),
        pytest.param(leaf("event.digits", "lt", 9), False, id="numeric-string-vs-number-lt"),
        pytest.param(leaf("event.total", "gt", "100"), False, id="number-vs-string"),
        pytest.param(leaf("event.total", "lte", "999"), False, id="number-vs-string-lte"),
        pytest.param(leaf("event.flag", "gt", 0), False, id="bool-gt-number"),
        pytest.param(leaf("event.flag", "lt", 2), False, id="bool-lt-number"),
        pytest.param(leaf("event.flag", "gte", 1), False, id="bool-gte-one"),
        pytest.param(leaf("event.nothing", "gt", 0), False, id="null-vs-number"),
        pytest.param(leaf("event.tags", "gt", 0), False, id="list-vs-number"),
        pytest.param(leaf("event.meta", "lt", "z"), False, id="dict-vs-string"),
    ],
)
def test_ordering_on_mismatched_types_is_false(spec: dict[str, Any], expected: bool) -> None:
    assert check(spec) is expected


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        pytest.param("event.name", "d", True, id="string-substring"),
        pytest.param("event.name", "Ada", True, id="string-whole"),
        pytest.param("event.name", "x", False, id="string-no-substring"),
        pytest.param("event.name", 1, False, id="string-vs-number"),
        pytest.param("event.tags", "new", True, id="list-item"),
        pytest.param("event.tags", "ne", False, id="list-no-substring-of-items"),
        pytest.param("event.meta", "source", True, id="dict-key"),
        pytest.param("event.meta", "ads", False, id="dict-value-is-not-a-key"),
        pytest.param("event.total", 1, False, id="number-is-no-container"),
        pytest.param("event.nothing", "x", False, id="null"),
    ],
)
def test_contains(field: str, value: Any, expected: bool) -> None:
    assert check(leaf(field, "contains", value)) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            {
                "all": [
                    leaf("event.total", "eq", 120),
                    {
                        "any": [
                            leaf("user.plan", "eq", "free"),
                            leaf("event.tags", "contains", "vip"),
                        ]
                    },
                ]
            },
            True,
            id="all-of-leaf-and-true-any",
        ),
        pytest.param(
            {
                "all": [
                    leaf("event.total", "eq", 120),
                    {"any": [leaf("user.plan", "eq", "free"), leaf("event.tags", "contains", "x")]},
                ]
            },
            False,
            id="all-with-false-any",
        ),
        pytest.param(
            {
                "any": [
                    {"all": [leaf("event.total", "gt", 1), leaf("user.age", "lt", 18)]},
                    leaf("context.cart_id", "eq", "c1"),
                ]
            },
            True,
            id="any-saved-by-second",
        ),
        pytest.param(
            {
                "any": [
                    {"all": [leaf("event.total", "gt", 1), leaf("user.age", "lt", 18)]},
                    leaf("context.cart_id", "eq", "c2"),
                ]
            },
            False,
            id="any-all-false",
        ),
        pytest.param(
            {"all": [{"all": [{"any": [leaf("event.name", "in", ["Ada"])]}]}]},
            True,
            id="deep-single-children",
        ),
        pytest.param({"all": [leaf("event.total", "eq", 120)]}, True, id="all-of-one"),
        pytest.param({"any": [leaf("event.total", "eq", 1)]}, False, id="any-of-one"),
    ],
)
def test_nested_all_any(spec: dict[str, Any], expected: bool) -> None:
    assert check(spec) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(leaf("event.items.0.name", "eq", "shoe"), True, id="first-item"),
        pytest.param(leaf("event.items.1.qty", "gt", 4), True, id="second-item"),
        pytest.param(leaf("event.items.1.name", "eq", "shoe"), False, id="second-item-other"),
        pytest.param(leaf("event.items.2.name", "exists"), False, id="past-the-end"),
        pytest.param(leaf("event.items.2.name", "ne", "shoe"), True, id="past-the-end-ne"),
        pytest.param(leaf("event.items.-1.name", "exists"), False, id="negative-index"),
        pytest.param(leaf("event.items.first.name", "exists"), False, id="word-index"),
        pytest.param(leaf("event.name.0", "exists"), False, id="no-indexing-into-strings"),
        pytest.param(leaf("event.total.x", "exists"), False, id="through-a-number"),
        pytest.param(leaf("context.items.0.sku", "eq", "A1"), True, id="context-list"),
        pytest.param(leaf("event.meta.source", "eq", "ads"), True, id="nested-mapping"),
    ],
)
def test_paths_into_lists_and_mappings(spec: dict[str, Any], expected: bool) -> None:
    assert check(spec) is expected


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("user.plan", "pro", True),
        ("event.plan", "pro", False),
        ("context.plan", "pro", False),
        ("context.cart_id", "c1", True),
        ("event.cart_id", "c1", False),
        ("user.cart_id", "c1", False),
        ("event.name", "Ada", True),
        ("user.name", "Ada", False),
        ("user.events.signup", 1, True),
    ],
)
def test_each_root_reads_its_own_part_of_the_scope(field: str, value: Any, expected: bool) -> None:
    assert check(leaf(field, "eq", value)) is expected


def test_a_missing_root_in_the_scope_is_a_missing_field() -> None:
    scope = {"event": {"a": 1}}
    assert check(leaf("context.a", "eq", 1), scope) is False
    assert check(leaf("context.a", "ne", 1), scope) is True


def test_null_spec_is_always_true() -> None:
    condition = compile_condition(None)
    assert condition({}) is True
    assert condition.text == "always"


# ---- compile errors name the key path ------------------------------------------------------

ERROR_CASES = [
    pytest.param(
        {"all": [leaf("event.a", "eq", 1), leaf("event.a", "like", 1)]},
        "where.all[1].op: 'like' is not one of",
        id="unknown-op",
    ),
    pytest.param(
        {"any": [{"all": [leaf("event.a", "eq", 1), leaf("event.a", "between", 1)]}]},
        "where.any[0].all[1].op:",
        id="unknown-op-nested",
    ),
    pytest.param(
        leaf("payload.total", "eq", 1),
        "where.field: 'payload.total' must start with event., user. or context.",
        id="bad-root",
    ),
    pytest.param(leaf("event", "eq", 1), "where.field: 'event' must start", id="root-only"),
    pytest.param(leaf("event..a", "eq", 1), "where.field: 'event..a'", id="empty-segment"),
    pytest.param({"op": "eq", "value": 1}, "where.field: expected a dotted path", id="no-field"),
    pytest.param(
        {"any": [leaf("event.a", "eq", 1), {"field": "event.b", "op": "gt"}]},
        "where.any[1].value: required for op 'gt'",
        id="missing-value",
    ),
    pytest.param(
        leaf("event.a", "in", "abc"), "where.value: op 'in' needs a list", id="in-without-list"
    ),
    pytest.param(
        leaf("event.a", "not_in", {"a": 1}),
        "where.value: op 'not_in' needs a list",
        id="not-in-without-list",
    ),
    pytest.param(
        {"field": "event.a", "op": "eq", "value": 1, "values": [2]},
        "where: unknown key 'values'",
        id="extra-key",
    ),
    pytest.param(
        {"all": [{"field": "event.a", "value": 1, "opp": "eq"}]},
        "where.all[0]: unknown key 'opp'",
        id="extra-key-nested",
    ),
    pytest.param({"all": []}, "where.all: expected a non-empty list", id="empty-all"),
    pytest.param({"any": []}, "where.any: expected a non-empty list", id="empty-any"),
    pytest.param({"all": "event.a"}, "where.all: expected a non-empty list", id="all-string"),
    pytest.param(
        {"all": [leaf("event.a", "eq", 1)], "any": [leaf("event.a", "eq", 1)]},
        "where: 'all' or 'any' must stand alone",
        id="all-and-any",
    ),
    pytest.param(
        {"all": [leaf("event.a", "eq", 1)], "field": "event.b"},
        "where: 'all' or 'any' must stand alone",
        id="all-and-field",
    ),
    pytest.param("event.a == 1", "where: expected a mapping", id="not-a-mapping"),
    pytest.param(
        {"all": [leaf("event.a", "eq", 1), ["event.a"]]},
        "where.all[1]: expected a mapping",
        id="list-child",
    ),
    pytest.param(
        leaf("event.a", "gt", True), "where.value: op 'gt' needs a number", id="gt-boolean"
    ),
    pytest.param(
        leaf("event.a", "lte", [1]), "where.value: op 'lte' needs a number", id="lte-list"
    ),
    pytest.param(
        leaf("event.a", "exists", "yes"),
        "where.value: op 'exists' takes true or false",
        id="exists",
    ),
]


@pytest.mark.parametrize(("spec", "message"), ERROR_CASES)
def test_compile_errors_name_the_key_path(spec: Any, message: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_condition(spec)
    assert str(info.value).startswith(message)


def test_compile_error_uses_the_callers_key_path() -> None:
    with pytest.raises(ConditionError, match=r"^steps\[2\]\.wait_for\.where\.any\[0\]\.op: "):
        compile_condition({"any": [leaf("event.a", "is", 1)]}, "steps[2].wait_for.where")


def test_condition_error_is_a_value_error() -> None:
    assert issubclass(ConditionError, ValueError)


def test_null_child_inside_all_is_a_compile_error() -> None:
    with pytest.raises(ConditionError, match=r"where\.all\[1\]"):
        compile_condition({"all": [leaf("event.a", "eq", 1), None]})


# ---- type surprises from event payloads never raise ----------------------------------------


@pytest.mark.parametrize("op", ["in", "not_in"])
@pytest.mark.parametrize("field", ["event.tags", "event.meta"])
def test_in_on_an_unhashable_field_is_false_not_an_error(op: str, field: str) -> None:
    assert check(leaf(field, op, ["vip", "source"])) is (op == "not_in")


def test_contains_on_a_mapping_with_an_unhashable_value_is_false() -> None:
    assert check(leaf("event.meta", "contains", ["source"])) is False


# ---- cheapest first, and stop at the first child that decides ------------------------------


class Recording(Mapping[str, Any]):
    """A mapping that records every key looked up in it, in order."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self.reads: list[str] = []

    def __getitem__(self, key: str) -> Any:
        self.reads.append(key)
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def recording_scope() -> tuple[dict[str, Any], Recording]:
    event = Recording({"total": 120, "name": "Ada", "tags": ["vip"], "boom": "x"})
    return {"event": event, "user": {}, "context": {}}, event


@pytest.mark.parametrize(
    ("spec", "expected", "reads"),
    [
        pytest.param(
            {"all": [leaf("event.tags", "contains", "vip"), leaf("event.total", "eq", 0)]},
            False,
            ["total"],
            id="all-decided-false-by-cheap-eq",
        ),
        pytest.param(
            {"any": [leaf("event.tags", "contains", "vip"), leaf("event.total", "eq", 120)]},
            True,
            ["total"],
            id="any-decided-true-by-cheap-eq",
        ),
        pytest.param(
            {"all": [leaf("event.tags", "contains", "vip"), leaf("event.total", "eq", 120)]},
            True,
            ["total", "tags"],
            id="all-undecided-reads-both-cheap-first",
        ),
        pytest.param(
            {
                "all": [
                    leaf("event.tags", "contains", "vip"),
                    leaf("event.name", "in", ["Ada"]),
                    leaf("event.total", "gt", 1),
                    leaf("event.total", "exists"),
                ]
            },
            True,
            ["total", "total", "name", "tags"],
            id="exists-then-ordering-then-in-then-contains",
        ),
        pytest.param(
            {
                "all": [
                    {"any": [leaf("event.total", "gt", 1), leaf("event.total", "lt", 0)]},
                    leaf("event.tags", "contains", "vip"),
                    leaf("event.name", "eq", "Ada"),
                ]
            },
            True,
            ["name", "total", "tags"],
            id="nested-any-sorted-by-its-total-cost-and-short-circuits",
        ),
        pytest.param(
            {
                "any": [
                    {"all": [leaf("event.name", "eq", "Bob"), leaf("event.boom", "contains", "x")]},
                    leaf("event.total", "ne", 120),
                ]
            },
            False,
            ["total", "name"],
            id="nested-all-short-circuits-inside-any",
        ),
    ],
)
def test_cheapest_first_and_short_circuit(
    spec: dict[str, Any], expected: bool, reads: list[str]
) -> None:
    scope, event = recording_scope()
    assert compile_condition(spec)(scope) is expected
    assert event.reads == reads


def test_an_expensive_child_that_would_raise_is_never_evaluated() -> None:
    class Exploding(Recording):
        def __getitem__(self, key: str) -> Any:
            if key == "boom":
                raise AssertionError("the contains side was evaluated")
            return super().__getitem__(key)

    event = Exploding({"total": 120, "boom": "x"})
    scope = {"event": event, "user": {}, "context": {}}
    spec = {"all": [leaf("event.boom", "contains", "x"), leaf("event.total", "eq", 0)]}
    assert compile_condition(spec)(scope) is False
    spec = {"any": [leaf("event.boom", "contains", "x"), leaf("event.total", "eq", 120)]}
    assert compile_condition(spec)(scope) is True


def test_text_lists_children_in_evaluation_order() -> None:
    condition = compile_condition(
        {"all": [leaf("event.tags", "contains", "vip"), leaf("event.total", "eq", 0)]}
    )
    assert condition.text == "(event.total eq 0) all (event.tags contains 'vip')"
    assert condition.cost == 5
