"""The Jinja2 sandbox templates render in: immutable, mapping keys before methods, and
bounded ``*``, ``**`` and padding."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import Environment, StrictUndefined, Undefined
from jinja2.exceptions import SecurityError
from jinja2.filters import do_format
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Limits on what one expression may build. Without them `2 ** (10 ** 10)` hangs the
# compiler itself (Jinja folds constant expressions at compile time).
MAX_POWER_BITS = 4096
MAX_REPEAT = 1_000_000
_CALL_PROBES = frozenset({"jinja_pass_arg", "unsafe_callable", "alters_data"})


def _huge_power(left: Any, right: Any) -> bool:
    if not (isinstance(left, int) and isinstance(right, int)) or abs(left) < 2 or right < 1:
        return False
    return abs(left).bit_length() * right > MAX_POWER_BITS


def _huge_repeat(left: Any, right: Any) -> bool:
    for seq, times in ((left, right), (right, left)):
        if isinstance(times, int) and isinstance(seq, str | list | tuple):
            return len(seq) * times > MAX_REPEAT
    if isinstance(left, int) and isinstance(right, int):  # squaring in a loop grows too
        return abs(left).bit_length() + abs(right).bit_length() > MAX_POWER_BITS
    return False


# Methods and format specs that pad a string to a width: bounded like repetition.
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_WIDE_SPEC = re.compile(r"\d{7,}")  # a width or precision of a million or more


def _huge_width(method: Any, args: tuple[Any, ...]) -> bool:
    method = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return False
    name = getattr(method, "__name__", "")
    if name in _WIDTH_METHODS:
        return any(isinstance(a, int) and a > MAX_REPEAT for a in args)
    return name in ("format", "format_map") and bool(_WIDE_SPEC.search(owner))


def bounded_format(value: Any, *args: Any, **kwargs: Any) -> str:
    """Jinja's ``format`` filter (printf style), refusing widths past the repeat limit."""
    if isinstance(value, str) and _WIDE_SPEC.search(value):
        raise SecurityError(f"a format width past {MAX_REPEAT} is not allowed in a template")
    return str(do_format(value, *args, **kwargs))


class _MissingKey(StrictUndefined):
    """A key a mapping lacks that is also the name of one of its methods (``items``, ``get``).

    It is undefined, so ``context.items | default([])`` and ``is defined`` mean the key,
    yet calling it still calls the method, so ``user.items()`` and ``user.get("x")`` work.
    """

    __slots__ = ("_method",)

    def __init__(self, method: Callable[..., Any], obj: Any, name: str) -> None:
        super().__init__(obj=obj, name=name)
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Jinja probes callables for these with getattr/hasattr, which only tolerate
        # AttributeError; any other attribute is the undefined error it should be.
        if name in _CALL_PROBES:
            raise AttributeError(name)
        return super().__getattr__(name)


class Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with mapping keys before methods and bounded ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if not isinstance(obj, Mapping):
            return super().getattr(obj, attribute)
        try:
            return obj[attribute]
        except (KeyError, TypeError):
            pass
        value = super().getattr(obj, attribute)  # the sandbox vets the method
        if callable(value) and not isinstance(value, Undefined):
            return _MissingKey(value, obj, attribute)
        return value

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if _huge_width(__obj, args) or _huge_width(__obj, tuple(kwargs.values())):
            raise SecurityError(f"padding a string past {MAX_REPEAT} is not allowed")
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _huge_power(left, right):
            raise SecurityError(f"a power over {MAX_POWER_BITS} bits is not allowed in a template")
        if operator == "*" and _huge_repeat(left, right):
            raise SecurityError(
                f"repeating a sequence past {MAX_REPEAT} items (or multiplying numbers past"
                f" {MAX_POWER_BITS} bits) is not allowed"
            )
        return super().call_binop(context, operator, left, right)


def sandbox() -> Environment:
    """The sandbox email templates render in (plain text, ``StrictUndefined``, bounded
    ``*``, ``**`` and padding), without a loader: for short templates kept in the config,
    such as webhook bodies."""
    env = Sandbox(autoescape=False, undefined=StrictUndefined, auto_reload=False)
    env.filters["format"] = bounded_format
    return env
