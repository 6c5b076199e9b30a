"""Conditions on event payloads, user traits and enrollment context, compiled once.

A condition is a leaf ``{field: event.total, op: gt, value: 100}`` or a combination
``{all: [...]}`` / ``{any: [...]}``. Fields are dotted paths rooted at ``event``
(the payload, plus ``event.type``/``event.id``), ``user`` (traits, plus ``user.consent``,
``user.events`` counts, ``user.last_activity`` and ``user.segments``) or ``context`` (the
enrollment's). ``{in_segment: vip}`` is short for ``{field: user.segments.vip, op: exists}``.
Children are evaluated cheapest first and evaluation stops at the first that decides.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailstream.workflows.segments import check_name

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "exists")
ROOTS = ("event", "user", "context")
_MISSING = object()
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}

# Relative cost of each operator, used to order siblings.
_COST = {"exists": 1, "eq": 1, "ne": 1, "gt": 2, "gte": 2, "lt": 2, "lte": 2}
_COST.update({"in": 3, "not_in": 3, "contains": 4})

Scope = Mapping[str, Any]  # {"event": ..., "user": ..., "context": ...}


class ConditionError(ValueError):
    """A condition is malformed; the message says where (as a key path) and why."""


def _index(part: str) -> int:
    """A path part as a list index; a huge value (never a valid index) when it is not one.
    ``isdigit`` also accepts digits such as "²" that ``int`` refuses."""
    if part.isascii() and part.isdigit() and len(part) <= 9:
        return int(part)
    return 1 << 62


def _lookup(scope: Scope, path: tuple[str, ...]) -> Any:
    node: Any = scope
    for part in path:
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and _index(part) < len(node):
            node = node[_index(part)]
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "exists":
        return (left is not _MISSING and left is not None) == bool(right)
    if left is _MISSING:
        return op in ("ne", "not_in")
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if op in ("in", "not_in"):
        try:
            found = left in right
        except TypeError:  # an unhashable value (a list or object) from the payload
            found = any(left == v for v in right)
        return found if op == "in" else not found
    if op == "contains":
        if isinstance(left, str):
            return isinstance(right, str) and right in left
        if isinstance(left, list | tuple | set | dict):
            try:
                return right in left
            except TypeError:  # an unhashable value looked up among an object's keys
                return False
        return False
    # Ordering: only numbers with numbers and strings with strings; anything else is false.
    numbers = (int, float)
    if isinstance(left, bool) or isinstance(right, bool):
        return False
    if not (
        (isinstance(left, numbers) and isinstance(right, numbers))
        or (isinstance(left, str) and isinstance(right, str))
    ):
        return False
    return bool(_ORDER[op](left, right))


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition: call it with a scope to get True or False."""

    test: Callable[[Scope], bool]
    cost: int
    text: str

    def __call__(self, scope: Scope) -> bool:
        return self.test(scope)


ALWAYS = Condition(lambda scope: True, 0, "always")


def compile_condition(spec: Any, where: str = "where", *, top: bool = True) -> Condition:
    """Compile a condition spec; raise ConditionError naming the key path of a mistake.

    An absent condition (None) at the top is always true; inside all/any it is an error.
    """
    if spec is None and top:
        return ALWAYS
    if not isinstance(spec, Mapping):
        raise ConditionError(f"{where}: expected a mapping with field/op/value, all or any")
    if "all" in spec or "any" in spec:
        if len(spec) != 1:
            raise ConditionError(f"{where}: 'all' or 'any' must stand alone in its mapping")
        kind = "all" if "all" in spec else "any"
        items = spec[kind]
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise ConditionError(f"{where}.{kind}: expected a non-empty list of conditions")
        children = sorted(
            (compile_condition(c, f"{where}.{kind}[{i}]", top=False) for i, c in enumerate(items)),
            key=lambda c: c.cost,
        )
        tests = tuple(c.test for c in children)
        cost = sum(c.cost for c in children)
        text = f" {kind} ".join(f"({c.text})" for c in children)
        if kind == "all":
            return Condition(lambda scope: all(t(scope) for t in tests), cost, text)
        return Condition(lambda scope: any(t(scope) for t in tests), cost, text)
    if "in_segment" in spec:
        return _compile_in_segment(spec, where)
    return _compile_leaf(spec, where)


def _compile_in_segment(spec: Mapping[str, Any], where: str) -> Condition:
    if len(spec) != 1:
        raise ConditionError(f"{where}: 'in_segment' must stand alone in its mapping")
    try:
        name = check_name(spec["in_segment"])
    except ValueError as exc:
        raise ConditionError(f"{where}.in_segment: {exc}") from None
    leaf = _compile_leaf({"field": f"user.segments.{name}", "op": "exists"}, where)
    return Condition(leaf.test, leaf.cost, f"in segment {name}")


def _compile_leaf(spec: Mapping[str, Any], where: str) -> Condition:
    unknown = set(spec) - {"field", "op", "value"}
    if unknown:
        raise ConditionError(f"{where}: unknown key {sorted(unknown)[0]!r} (use field, op, value)")
    field = spec.get("field")
    if not isinstance(field, str) or not field:
        raise ConditionError(f"{where}.field: expected a dotted path such as 'event.total'")
    path = tuple(field.split("."))
    if path[0] not in ROOTS or len(path) < 2 or not all(path):
        raise ConditionError(f"{where}.field: {field!r} must start with event., user. or context.")
    op = spec.get("op", "eq")
    if op not in OPERATORS:
        raise ConditionError(f"{where}.op: {op!r} is not one of {', '.join(OPERATORS)}")
    if "value" not in spec and op != "exists":
        raise ConditionError(f"{where}.value: required for op {op!r}")
    value = spec.get("value", True)
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            raise ConditionError(f"{where}.value: op {op!r} needs a list")
        try:
            value = frozenset(value)
        except TypeError:
            value = tuple(value)
    if op in ("gt", "gte", "lt", "lte") and (
        isinstance(value, bool) or not isinstance(value, int | float | str)
    ):
        raise ConditionError(f"{where}.value: op {op!r} needs a number or a string")
    if op == "exists" and not isinstance(value, bool):
        raise ConditionError(f"{where}.value: op 'exists' takes true or false")

    def test(scope: Scope) -> bool:
        return _compare(op, _lookup(scope, path), value)

    return Condition(test, _COST[op], f"{field} {op} {value!r}")
