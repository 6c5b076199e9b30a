"""The labels a worker puts on the workflow health counters: why a render failed, and which
workflow a send or a due timer belongs to (mailstream.workflows.health scores them)."""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from typing import Any

from jinja2.exceptions import SecurityError, UndefinedError

from mailstream.workflows.send_policy import DEFER_TIMER
from mailstream.workflows.template_files import TemplateError

MAX_VARIABLE_CHARS = 40
_UNDEFINED = (
    re.compile(r"^'(?P<name>[^']+)' is undefined$"),
    re.compile(r"has no attribute '(?P<name>[^']+)'$"),
    re.compile(r"has no element (?P<element>.+)$"),
)
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.\[\]-]")

UNDEFINED_VARIABLE = "undefined_variable"
TOO_LARGE = "too_large"
TOO_LARGE_PREFIX = "the rendered message is"  # how mailstream.workflows.apply_effects words it
# Why a render failed: a bounded set, the label of mailstream_template_renders_total.
RENDER_REASONS = {
    UNDEFINED_VARIABLE: "missing variable",
    "sandbox": "unsafe access blocked by the sandbox",
    "runtime_error": "an error while rendering",
    "bad_subject": "the subject is empty or would hold a line break",
    "invalid_template": "the template is missing or does not compile (run `mailstream check`)",
    TOO_LARGE: "the rendered message is over delivery.max_message_bytes",
}


def render_failure(exc: TemplateError) -> tuple[str, str]:
    """Why a render failed, as (reason, variable): the variable is the missing name for
    an undefined variable (cut to ``MAX_VARIABLE_CHARS``, odd characters replaced), else
    empty. The caller still caps how many distinct variables it counts."""
    cause = exc.__cause__
    if isinstance(cause, UndefinedError):
        return UNDEFINED_VARIABLE, undefined_name(exc.reason)
    if isinstance(cause, SecurityError):
        return "sandbox", ""
    if cause is not None:
        return "runtime_error", ""
    if exc.reason.startswith(TOO_LARGE_PREFIX):
        return TOO_LARGE, ""
    if exc.reason.startswith("the subject"):
        return "bad_subject", ""
    return "invalid_template", ""


def undefined_name(message: str) -> str:
    """The missing name in one of Jinja's undefined messages ("'items' is undefined",
    "'dict object' has no attribute 'items'"), or '?' when it names none."""
    for pattern in _UNDEFINED:
        found = pattern.search(message)
        if found is None:
            continue
        groups = found.groupdict()
        name = groups.get("name") or f"[{groups['element']}]"
        name = _UNSAFE_CHARS.sub("?", name)
        if len(name) > MAX_VARIABLE_CHARS:
            name = name[: MAX_VARIABLE_CHARS - 3] + "..."
        return name
    return "?"


def known_workflow(name: Any, workflows: Container[str]) -> str | None:
    """A send command's workflow as a metric label: only a configured one (a command
    written by another client, or queued before its workflow was removed, has none)."""
    return name if isinstance(name, str) and name in workflows else None


def timer_workflow(kind: str, name: str, deferred: Mapping[str, Any]) -> str:
    """The workflow a due timer belongs to: its name, except for a held send, whose
    timer is named by its send id (the user's ``deferred`` says the workflow)."""
    if kind != DEFER_TIMER:
        return name
    held = deferred.get(name)
    workflow = held.get("workflow") if isinstance(held, Mapping) else None
    return workflow if isinstance(workflow, str) else ""
