"""A webhook's JSON body: a structure from the config whose strings are templates,
rendered in the email templates' sandbox with the user, the event and the context.

Keys are literal. A string that is one expression and nothing else (``"{{ event.total }}"``)
becomes that expression's value, so numbers, lists and objects keep their JSON type; any
other string is rendered as text. A value, however hostile, is never evaluated again and
always lands inside a JSON string or value: the body is built as data and encoded once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from jinja2 import Template, Undefined
from jinja2.exceptions import SecurityError, TemplateSyntaxError

from mailstream.exceptions import MailstreamError
from mailstream.workflows.template_sandbox import sandbox

MAX_BODY_BYTES = 256 * 1024
_WHOLE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
_ENV = sandbox()


class BodyError(MailstreamError):
    """A body could not be compiled or rendered: where in it, and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class _Expr:
    path: str
    compiled: Any  # jinja2 TemplateExpression


@dataclass(frozen=True, slots=True)
class _Text:
    path: str
    template: Template


Node = Any  # dict[str, Node] | list[Node] | _Expr | _Text | a JSON constant


def _compile(value: Any, path: str) -> Node:
    if isinstance(value, Mapping):
        out: dict[str, Node] = {}
        for key, child in value.items():
            if not isinstance(key, str):
                raise BodyError(path, f"key {key!r} is not a string: JSON keys are strings")
            out[key] = _compile(child, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_compile(child, f"{path}[{n}]") for n, child in enumerate(value)]
    if isinstance(value, str):
        try:
            whole = _WHOLE.match(value)
            expr = whole["expr"] if whole else None
            if expr is not None and "{{" not in expr and "}}" not in expr and "{%" not in value:
                return _Expr(path, _ENV.compile_expression(expr, undefined_to_none=False))
            if "{" not in value:
                return value
            return _Text(path, _ENV.from_string(value))
        except TemplateSyntaxError as exc:
            raise BodyError(path, f"syntax error: {exc.message}") from None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise BodyError(path, f"{type(value).__name__} is not a JSON value")


def _plain(value: Any, path: str) -> Any:
    """An expression's value as JSON data, or a BodyError saying why it cannot be."""
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined: raises the UndefinedError that names the variable
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BodyError(path, f"{value} is not a JSON number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, child in value.items():
            if not isinstance(key, str):
                raise BodyError(path, f"key {key!r} is not a string: JSON keys are strings")
            out[key] = _plain(child, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(child, f"{path}[{n}]") for n, child in enumerate(value)]
    raise BodyError(path, f"the expression gives a {type(value).__name__}, not a JSON value")


def _render(node: Node, variables: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        return {key: _render(child, variables) for key, child in node.items()}
    if isinstance(node, list):
        return [_render(child, variables) for child in node]
    if isinstance(node, _Expr | _Text):
        try:
            if isinstance(node, _Text):
                return node.template.render(variables)
            return _plain(node.compiled(**variables), node.path)
        except BodyError:
            raise
        except SecurityError as exc:
            raise BodyError(node.path, f"unsafe access blocked by the sandbox: {exc}") from None
        except Exception as exc:
            raise BodyError(node.path, f"{type(exc).__name__}: {exc}") from None
    return node


class Body:
    """A body compiled once (at config load, so a syntax error names its key)."""

    def __init__(self, spec: Mapping[str, Any], path: str = "body") -> None:
        self.spec = spec
        self._tree = _compile(spec, path)

    def render(
        self,
        user: Mapping[str, Any],
        event: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The JSON object to send; every failure is a BodyError."""
        variables = {"user": user, "event": event, "context": context}
        rendered: dict[str, Any] = _render(self._tree, variables)
        try:
            size = len(orjson.dumps(rendered))
        except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate in a value
            raise BodyError("body", f"cannot be encoded as JSON: {exc}") from None
        if size > MAX_BODY_BYTES:
            raise BodyError("body", f"renders to {size} bytes, over the {MAX_BODY_BYTES} limit")
        return rendered

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Body) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(orjson.dumps(self.spec, option=orjson.OPT_SORT_KEYS))

    def __repr__(self) -> str:
        return f"Body({self.spec!r})"
