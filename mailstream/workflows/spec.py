"""The ``workflows:`` section of the config: its schema, and its compiled, runnable form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from mailstream.config.durations import parse_duration
from mailstream.core.conditions import ALWAYS, Condition, ConditionError, compile_condition
from mailstream.webhooks_out.step import WebhookAction, WebhookStep, compile_webhook
from mailstream.workflows.digest import DEFAULT_MAX_ITEMS, MAX_ITEMS, DigestRule
from mailstream.workflows.field_changes import (
    DEFAULT_KEEP,
    MAX_KEEP,
    ChangedSpec,
    ChangeRule,
    compile_changes,
)
from mailstream.workflows.segments import SegmentChange, check_name

Seconds = Annotated[float, BeforeValidator(parse_duration)]
StrictNumber = Annotated[int, Field(strict=True)] | Annotated[float, Field(strict=True)]
EXIT = "exit"
STEP_KINDS = (
    "send",
    "wait",
    "wait_for",
    "branch",
    "update_user",
    "exit",
    "digest",
    "segment",
    "webhook",
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_condition(value: Any) -> Any:
    try:
        compile_condition(value)
    except ConditionError as exc:
        raise ValueError(str(exc)) from None
    return value


Where = Annotated[Any, BeforeValidator(_check_condition)]


class TriggerSpec(_Spec):
    event: str | None = None
    where: Where = None
    inactive_for: Seconds | None = None
    # Fire only when these payload fields change (see mailstream.workflows.field_changes),
    # per entity id.
    changed: ChangedSpec | None = None
    entity: str | None = Field(None, pattern=r"^[^.\s]+(\.[^.\s]+)*$", max_length=256)
    keep: int = Field(DEFAULT_KEEP, ge=1, le=MAX_KEEP)  # entities remembered per user

    @model_validator(mode="after")
    def _one_kind(self) -> TriggerSpec:
        if (self.event is None) == (self.inactive_for is None):
            raise ValueError("a trigger needs exactly one of 'event' or 'inactive_for'")
        if self.inactive_for is not None and self.where is not None:
            raise ValueError("'where' applies to event triggers only")
        if self.inactive_for is not None and self.changed is not None:
            raise ValueError("'changed' applies to event triggers only")
        if self.changed is None and self.entity is not None:
            raise ValueError("'entity' applies with 'changed' only")
        if self.entity is None and "keep" in self.model_fields_set:
            raise ValueError("'keep' applies with 'entity' only")
        return self


class GoalSpec(_Spec):
    event: str
    where: Where = None


class SendStep(_Spec):
    id: str | None = None
    send: str = Field(min_length=1)
    category: Literal["transactional", "marketing"] = "marketing"
    priority: Literal["high", "normal", "low"] = "normal"


class WaitStep(_Spec):
    id: str | None = None
    wait: Seconds


class WaitForSpec(_Spec):
    event: str
    where: Where = None
    timeout: Seconds
    on_event: str | None = None
    on_timeout: str | None = None


class WaitForStep(_Spec):
    id: str | None = None
    wait_for: WaitForSpec


class BranchSpec(_Spec):
    if_: Where = Field(alias="if")
    then: str | None = None
    else_: str | None = Field(None, alias="else")


class BranchStep(_Spec):
    id: str | None = None
    branch: BranchSpec


class UpdateUserSpec(_Spec):
    set: dict[str, Any] = {}
    increment: dict[str, StrictNumber] = {}


class UpdateUserStep(_Spec):
    id: str | None = None
    update_user: UpdateUserSpec


class ExitStep(_Spec):
    id: str | None = None
    exit: Literal[True] = True


NonEmpty = Annotated[str, Field(min_length=1)]


class DigestSpec(_Spec):
    event: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1)]
    where: Where = None
    window: Annotated[Seconds, Field(gt=0)]
    max_items: int = Field(DEFAULT_MAX_ITEMS, ge=1, le=MAX_ITEMS)
    template: str = Field(min_length=1)
    category: Literal["transactional", "marketing"] = "marketing"
    priority: Literal["high", "normal", "low"] = "normal"
    fields: list[NonEmpty] | None = Field(None, min_length=1)  # payload keys kept per item


class DigestStep(_Spec):
    id: str | None = None
    digest: DigestSpec


SegmentName = Annotated[str, BeforeValidator(check_name)]


def _name_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


SegmentNames = Annotated[list[SegmentName], BeforeValidator(_name_list)]


class SegmentSpec(_Spec):
    add: SegmentNames = []
    remove: SegmentNames = []

    @model_validator(mode="after")
    def _something_to_do(self) -> SegmentSpec:
        if not self.add and not self.remove:
            raise ValueError("a segment step needs 'add' or 'remove' (a name or a list)")
        both = set(self.add) & set(self.remove)
        if both:
            raise ValueError(f"segment {sorted(both)[0]!r} is both added and removed")
        return self


class SegmentStep(_Spec):
    id: str | None = None
    segment: SegmentSpec


def _step_kind(value: Any) -> str | None:
    if value == "exit":
        return "exit"
    if isinstance(value, dict):
        kinds = [k for k in STEP_KINDS if k in value]
        return kinds[0] if len(kinds) == 1 else None
    if isinstance(value, BaseModel):
        return next(k for k in STEP_KINDS if hasattr(value, k))
    return None


def _exit_shorthand(value: Any) -> Any:
    return {"exit": True} if value == "exit" else value


StepSpec = Annotated[
    Annotated[SendStep, Tag("send")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[WaitForStep, Tag("wait_for")]
    | Annotated[BranchStep, Tag("branch")]
    | Annotated[UpdateUserStep, Tag("update_user")]
    | Annotated[ExitStep, Tag("exit")]
    | Annotated[DigestStep, Tag("digest")]
    | Annotated[SegmentStep, Tag("segment")]
    | Annotated[WebhookStep, Tag("webhook")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step needs exactly one of: " + ", ".join(STEP_KINDS),
    ),
    BeforeValidator(_exit_shorthand),
]


class OncePer(_Spec):
    once_per: Seconds


class WorkflowSpec(_Spec):
    trigger: TriggerSpec
    entry: Literal["once", "always"] | OncePer = "once"
    goals: list[GoalSpec] = []
    steps: list[StepSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _targets_exist(self) -> WorkflowSpec:
        ids = [s.id for s in self.steps if s.id is not None]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"step ids must be unique: {sorted(dupes)[0]!r} is used twice")
        if EXIT in ids:
            n = next(n for n, s in enumerate(self.steps) if s.id == EXIT)
            raise ValueError(
                f"steps[{n}].id: 'exit' is reserved (a jump to 'exit' ends the"
                " workflow); give the step another id"
            )
        known = set(ids) | {EXIT}
        for n, step in enumerate(self.steps):
            targets: dict[str, str | None] = {}
            if isinstance(step, BranchStep):
                targets = {"branch.then": step.branch.then, "branch.else": step.branch.else_}
            elif isinstance(step, WaitForStep):
                targets = {
                    "wait_for.on_event": step.wait_for.on_event,
                    "wait_for.on_timeout": step.wait_for.on_timeout,
                }
            for where, target in targets.items():
                if target is not None and target not in known:
                    raise ValueError(
                        f"steps[{n}].{where}: no step with id {target!r} (ids: "
                        f"{', '.join(sorted(set(ids))) or 'none'}; or 'exit')"
                    )
        return self


# ---- the compiled form the engine runs -------------------------------------------------

END = -1  # "after the last step": the enrollment completes


@dataclass(frozen=True, slots=True)
class Step:
    kind: str
    index: int
    next: int  # the step that follows by default (END after the last)
    template: str = ""
    category: str = "marketing"
    priority: str = "normal"
    duration_ms: int = 0
    condition: Condition = ALWAYS
    event: str = ""
    on_event: int = END
    on_timeout: int = END
    then: int = END
    otherwise: int = END
    set: dict[str, Any] = field(default_factory=dict)
    increment: dict[str, int | float] = field(default_factory=dict)
    rule: Any = None  # a digest's DigestRule, a segment step's SegmentChange
    webhook: WebhookAction | None = None


@dataclass(frozen=True, slots=True)
class Workflow:
    name: str
    trigger_event: str | None
    trigger: Condition
    inactive_for_ms: int | None
    entry: str  # once | always | once_per
    once_per_ms: int
    goals: tuple[tuple[str, Condition], ...]
    steps: tuple[Step, ...]
    changed: ChangeRule | None = None  # fire only when these fields change


EXIT_INDEX = -2  # a jump target meaning "exit the workflow now"


def compile_workflow(name: str, spec: WorkflowSpec) -> Workflow:
    ids = {s.id: n for n, s in enumerate(spec.steps) if s.id is not None}

    def target(value: str | None, default: int) -> int:
        if value is None:
            return default
        return EXIT_INDEX if value == EXIT else ids[value]

    steps: list[Step] = []
    for n, s in enumerate(spec.steps):
        nxt = n + 1 if n + 1 < len(spec.steps) else END
        if isinstance(s, SendStep):
            steps.append(
                Step("send", n, nxt, template=s.send, category=s.category, priority=s.priority)
            )
        elif isinstance(s, WaitStep):
            steps.append(Step("wait", n, nxt, duration_ms=int(s.wait * 1000)))
        elif isinstance(s, WaitForStep):
            w = s.wait_for
            steps.append(
                Step(
                    "wait_for",
                    n,
                    nxt,
                    event=w.event,
                    condition=compile_condition(w.where),
                    duration_ms=int(w.timeout * 1000),
                    on_event=target(w.on_event, nxt),
                    on_timeout=target(w.on_timeout, nxt),
                )
            )
        elif isinstance(s, BranchStep):
            b = s.branch
            steps.append(
                Step(
                    "branch",
                    n,
                    nxt,
                    condition=compile_condition(b.if_),
                    then=target(b.then, nxt),
                    otherwise=target(b.else_, nxt),
                )
            )
        elif isinstance(s, UpdateUserStep):
            steps.append(
                Step(
                    "update_user",
                    n,
                    nxt,
                    set=dict(s.update_user.set),
                    increment=dict(s.update_user.increment),
                )
            )
        elif isinstance(s, DigestStep | SegmentStep):
            steps.append(_compile_digest_or_segment(s, n, nxt))
        elif isinstance(s, WebhookStep):
            steps.append(Step("webhook", n, nxt, webhook=compile_webhook(s.webhook)))
        else:
            steps.append(Step("exit", n, EXIT_INDEX))
    if isinstance(spec.entry, OncePer):
        entry, once_per = "once_per", int(spec.entry.once_per * 1000)
    else:
        entry, once_per = spec.entry, 0
    t = spec.trigger
    return Workflow(
        name=name,
        trigger_event=t.event,
        trigger=compile_condition(t.where),
        inactive_for_ms=int(t.inactive_for * 1000) if t.inactive_for is not None else None,
        entry=entry,
        once_per_ms=once_per,
        goals=tuple((g.event, compile_condition(g.where)) for g in spec.goals),
        steps=tuple(steps),
        changed=(
            compile_changes(t.event, t.changed, t.entity, t.keep)
            if t.changed is not None and t.event is not None
            else None
        ),
    )


def _compile_digest_or_segment(s: DigestStep | SegmentStep, n: int, nxt: int) -> Step:
    if isinstance(s, SegmentStep):
        change = SegmentChange(tuple(s.segment.add), tuple(s.segment.remove))
        return Step("segment", n, nxt, rule=change)
    d = s.digest
    rule = DigestRule(
        events=frozenset([d.event] if isinstance(d.event, str) else d.event),
        window_ms=int(d.window * 1000),
        max_items=d.max_items,
        condition=compile_condition(d.where),
        fields=tuple(d.fields) if d.fields is not None else None,
    )
    return Step(
        "digest", n, nxt, template=d.template, category=d.category, priority=d.priority, rule=rule
    )
