"""Digest steps: collect a user's matching events, then send one email listing them.

An enrollment waiting at a digest step keeps the events it collected in its own record
(``enrollment["digest"]``, at most ``max_items``, each ``[event_id, event_type,
timestamp, payload]``). The window opens with the first item: the engine sets a durable
timer ``window`` after it, and the digest is sent when that timer fires or when the
``max_items``-th item arrives, whichever comes first. Until the first item arrives the
step waits without a timer, so a digest is never sent empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailstream.core.conditions import ALWAYS, Condition
from mailstream.core.events import Event

DEFAULT_MAX_ITEMS = 20
MAX_ITEMS = 100  # each item may hold a whole payload: the user record must stay small
ITEMS = "digest"  # the enrollment's key for the items collected


@dataclass(frozen=True, slots=True)
class DigestRule:
    events: frozenset[str]
    window_ms: int
    max_items: int = DEFAULT_MAX_ITEMS
    condition: Condition = ALWAYS
    fields: tuple[str, ...] | None = None  # payload keys kept per item; None: all


def collects(rule: DigestRule, event: Event, scope: Mapping[str, Any]) -> bool:
    return event.event_type in rule.events and rule.condition(scope)


def add(rule: DigestRule, items: list[list[Any]], event: Event) -> bool:
    """Add the event to the items; False when it is already there (a replay) or the
    digest is full."""
    if len(items) >= rule.max_items or any(item[0] == event.event_id for item in items):
        return False
    payload = event.payload
    if rule.fields is not None:
        payload = {k: payload[k] for k in rule.fields if k in payload}
    items.append([event.event_id, event.event_type, event.timestamp, dict(payload)])
    return True


def template_view(items: list[list[Any]]) -> dict[str, Any]:
    """What a digest's template sees as ``event``: the items, oldest first, and a summary."""
    listed = [
        {
            "event_id": event_id,
            "event_type": event_type,
            "timestamp": at,
            "time": datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="seconds"),
            "payload": payload,
        }
        for event_id, event_type, at, payload in sorted(items, key=lambda item: item[2])
    ]
    return {
        "items": listed,
        "count": len(listed),
        "first_at": listed[0]["timestamp"] if listed else None,
        "last_at": listed[-1]["timestamp"] if listed else None,
    }
