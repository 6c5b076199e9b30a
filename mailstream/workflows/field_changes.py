"""Field-change triggers: fire a workflow only when named payload fields change.

``trigger: {event: order_updated, entity: order_id, changed: [status]}`` compares each
``order_updated`` with the last one seen for the same user and order id. The last values
seen live in the user record, per event type (and entity field), per entity id, and are
updated on every event of that type, whether or not a trigger fires. A field absent from
the payload tells nothing and changes nothing; ``null`` means unset. A value seen for the
first time is a change from unset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import blake2b
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

DEFAULT_KEEP = 50
MAX_KEEP = 1000
# Longer strings, objects and lists are remembered by a digest, so what a user's record
# keeps per field stays small whatever the payload holds.
MAX_KEPT_CHARS = 256

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
FieldPath = Annotated[str, Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$", max_length=256)]


class FromTo(BaseModel):
    """Which changes of one field count: ``from`` and ``to`` a value or a list of values
    (``null`` is unset); either left out means any."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: Scalar | list[Scalar] = Field(None, alias="from")
    to: Scalar | list[Scalar] = None


def _as_mapping(value: Any) -> Any:
    """``changed: status`` and ``changed: [status, total]`` mean any change of those."""
    if isinstance(value, str):
        return {value: None}
    if isinstance(value, list):
        return {name: None for name in value} if all(isinstance(n, str) for n in value) else value
    return value


ChangedSpec = Annotated[
    dict[FieldPath, FromTo | None], BeforeValidator(_as_mapping), Field(min_length=1)
]


# ---- values as they are remembered and compared --------------------------------------


def remembered(value: Any) -> Any:
    """A payload value as the user record keeps it: itself when small, else a digest."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) and len(value) <= MAX_KEPT_CHARS:
        return value
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return {"#": blake2b(raw, digest_size=8).hexdigest()}


def token(value: Any) -> Any:
    """What equality means for remembered values: ``1`` equals ``1.0`` but not ``true``;
    None is unset."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, dict):
        return ("h", value.get("#"))
    return ("?", repr(value))


_MISSING = object()


def lookup(payload: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = payload
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


# ---- the compiled rule of one trigger --------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldRule:
    name: str  # the dotted path as written
    path: tuple[str, ...]
    before: frozenset[Any] | None = None  # tokens the old value must be one of; None: any
    after: frozenset[Any] | None = None  # tokens the new value must be one of; None: any


@dataclass(frozen=True, slots=True)
class ChangeRule:
    event_type: str
    fields: tuple[FieldRule, ...]
    entity: tuple[str, ...] | None = None
    keep: int = DEFAULT_KEEP

    @property
    def group(self) -> str:
        """Where this rule's last values live in the user record."""
        if self.entity is None:
            return self.event_type
        return f"{self.event_type}/{'.'.join(self.entity)}"

    def fires(self, seen: Mapping[str, Mapping[str, tuple[Any, Any]]]) -> bool:
        """Whether any of the rule's fields changed as it asks, given what ``observe`` saw."""
        changes = seen.get(self.group)
        if not changes:
            return False
        for rule in self.fields:
            change = changes.get(rule.name)
            if change is None:
                continue
            old, new = change
            if rule.before is not None and token(old) not in rule.before:
                continue
            if rule.after is not None and token(new) not in rule.after:
                continue
            return True
        return False


def _tokens(values: Any) -> frozenset[Any]:
    return frozenset(token(v) for v in (values if isinstance(values, list) else [values]))


def compile_changes(
    event_type: str,
    changed: Mapping[str, FromTo | None],
    entity: str | None = None,
    keep: int = DEFAULT_KEEP,
) -> ChangeRule:
    fields = []
    for name, when in changed.items():
        before = after = None
        if when is not None:
            given = when.model_fields_set
            before = _tokens(when.from_) if "from_" in given else None
            after = _tokens(when.to) if "to" in given else None
        fields.append(FieldRule(name, tuple(name.split(".")), before, after))
    path = tuple(entity.split(".")) if entity is not None else None
    return ChangeRule(event_type, tuple(fields), path, keep)


# ---- the last values seen, for every rule of the configured workflows -------------------

# group -> entity id ("" without an entity) -> field -> the last value seen, the entities
# in the order they were last seen (the oldest first, dropped first).
Memory = dict[str, dict[str, dict[str, Any]]]
Seen = dict[str, dict[str, tuple[Any, Any]]]  # group -> field -> (old, new)


@dataclass(slots=True)
class _Group:
    entity: tuple[str, ...] | None
    fields: dict[str, tuple[str, ...]]
    keep: int


class ChangeWatch:
    """Compares each event with the last values seen of the fields some trigger watches,
    and remembers the new ones."""

    def __init__(self, rules: Iterable[ChangeRule]) -> None:
        self.by_type: dict[str, dict[str, _Group]] = {}
        for rule in rules:
            groups = self.by_type.setdefault(rule.event_type, {})
            group = groups.setdefault(rule.group, _Group(rule.entity, {}, rule.keep))
            group.keep = max(group.keep, rule.keep)
            for f in rule.fields:
                group.fields[f.name] = f.path

    def observe(self, memory: Memory, event_type: str, payload: Mapping[str, Any]) -> Seen:
        """What changed in this event, per group; ``memory`` is updated in place."""
        seen: Seen = {}
        for name, group in self.by_type.get(event_type, {}).items():
            entity_id = ""
            if group.entity is not None:
                value = lookup(payload, group.entity)
                if isinstance(value, bool) or not isinstance(value, str | int):
                    continue  # no entity id: the event cannot be compared with anything
                entity_id = str(value)
            entities = memory.setdefault(name, {})
            last = entities.pop(entity_id, {})
            changes: dict[str, tuple[Any, Any]] = {}
            for field_name, path in group.fields.items():
                value = lookup(payload, path)
                if value is _MISSING:
                    continue
                old, new = last.get(field_name), remembered(value)
                if token(old) != token(new):
                    changes[field_name] = (old, new)
                if new is None:
                    last.pop(field_name, None)
                else:
                    last[field_name] = new
            if last:
                entities[entity_id] = last  # now the most recently seen
                for oldest in list(entities)[: max(0, len(entities) - group.keep)]:
                    del entities[oldest]
            if not entities:
                del memory[name]
            if changes:
                seen[name] = changes
        return seen
