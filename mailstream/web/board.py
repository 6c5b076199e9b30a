"""What the dashboard shows, worked out from plain data: lag per partition, the names of
workflow steps, and what stops mail to a user."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailstream.workflows.spec import WorkflowSpec, compile_workflow


def partition_lag(end: int | None, applied: int | None) -> dict[str, int | None]:
    """One partition of the events topic: its end offset (the high-water mark), the next
    offset not yet applied, and the difference.

    The caller reads ``applied`` before it asks the broker for ``end``, so on a correct
    broker ``end`` is never below it; a lower answer (a broker that reports a short end)
    is raised to ``applied``, since the partition holds at least what was applied.
    ``end`` None: the broker did not answer, and the lag is unknown."""
    done = applied or 0
    if end is None:
        return {"highwater": None, "applied": done, "lag": None}
    end = max(end, done)
    return {"highwater": end, "applied": done, "lag": end - done}


def step_labels(name: str, spec: WorkflowSpec) -> dict[str, str]:
    """Step index (as the funnel counts it) -> the step's id, or for a step without one,
    its position and what it does (``#2 send cart_reminder``)."""
    compiled = compile_workflow(name, spec)
    labels = {}
    for n, (given, step) in enumerate(zip(spec.steps, compiled.steps, strict=True)):
        if given.id is not None:
            labels[str(n)] = given.id
        else:
            what = f" {step.template}" if step.template else ""
            labels[str(n)] = f"#{n} {step.kind}{what}"
    return labels


def workflow_step_labels(specs: Mapping[str, WorkflowSpec]) -> dict[str, dict[str, str]]:
    return {name: step_labels(name, spec) for name, spec in specs.items()}


def label_funnel(
    funnel: Mapping[str, Any], labels: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    """The funnel with each workflow's ``steps``: its labels, for the indexes counted in
    ``waiting`` (an index a config no longer has keeps its number)."""
    out = {}
    for workflow, figures in funnel.items():
        known = labels.get(workflow, {})
        waiting = figures.get("waiting", {})
        out[workflow] = {**figures, "steps": {n: known.get(n, f"#{n}") for n in waiting}}
    return out


def suppression_summary(view: Mapping[str, Any]) -> dict[str, Any]:
    """What stops mail to a user, from their view: their own suppressions and their
    address's entry on the global list (``global_suppression``). ``suppressed`` is true
    when either is there, so a page never says "not suppressed" beside a global entry."""
    own = dict(view.get("suppressions") or {})
    global_entry = view.get("global_suppression")
    return {"own": own, "global": global_entry, "suppressed": bool(own or global_entry)}
