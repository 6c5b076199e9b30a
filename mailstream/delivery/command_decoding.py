"""Reading a command back from its topic, for both command types (send commands,
webhook calls): a JSON object whose required fields are strings, or why it is not one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson


def decode_object(
    value: bytes | None, required: Iterable[str], non_empty: bool = False
) -> dict[str, Any] | str:
    """The JSON object in ``value`` with every ``required`` field a string (a non-empty
    one with ``non_empty``), or why it is not one (for the dead-letter topic)."""
    try:
        command = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(command, dict):
        return "not a JSON object"
    missing = [
        f for f in required if not isinstance(command.get(f), str) or (non_empty and not command[f])
    ]
    if missing:
        what = "a non-empty string" if non_empty else "a string"
        return f"missing or not {what}: {', '.join(missing)}"
    return command
