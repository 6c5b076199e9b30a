"""Segments: named groups a workflow step puts a user in or takes a user out of.

A user's segments are kept in the user record as ``name -> when the user joined`` (epoch
ms), so conditions can test membership (``{in_segment: vip}``, or the field
``user.segments.vip``) and the user page can show since when.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The same characters as workflow names; a segment name is also a condition path part.
NAME_PATTERN = r"^[A-Za-z0-9_:-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)


def check_name(value: object) -> str:
    """A segment name, or ValueError saying what a name may hold."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a segment name: 1 to 64 letters, digits, '_', ':' or '-'"
        )
    return value


@dataclass(frozen=True, slots=True)
class SegmentChange:
    """What one segment step does: the segments it adds, then those it removes."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


def apply_change(segments: dict[str, int], change: SegmentChange, now: int) -> bool:
    """Add and remove the user's segments; return whether anything changed.

    Adding a segment the user is already in keeps the original join time.
    """
    changed = False
    for name in change.add:
        if name not in segments:
            segments[name] = now
            changed = True
    for name in change.remove:
        if segments.pop(name, None) is not None:
            changed = True
    return changed
