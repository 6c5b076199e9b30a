"""Segment-shaped calls (``track``, ``identify``, and a ``batch`` of them) as mailstream
events, checked by the same rules as events read from Kafka (mailstream.core.events).

A call's fields map onto an event's: ``userId`` -> ``user_id``, ``event`` ->
``event_type`` (``identify`` for an identify), ``properties`` / ``traits`` ->
``payload``, ``messageId`` -> ``event_id`` (the dedup key: a call sent twice is applied
once), ``timestamp`` (ISO 8601, or epoch ms) -> ``timestamp``, and
``context.consent_source`` -> ``metadata.consent_source`` (mailstream.suppression.lifecycle).
An error names the field as the caller wrote it. Pure: the clock is passed in.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from mailstream.core.events import Event, Invalid, Limits, decode_event, object_field

KINDS = ("track", "identify")


@dataclass(frozen=True, slots=True)
class BadCall(Exception):
    """A call that is not taken: ``code`` for metrics, ``detail`` naming the field."""

    code: str
    detail: str

    def __str__(self) -> str:
        return self.detail


# mailstream's names in an event's error, as the caller wrote them
_FIELDS = (
    (re.compile(r"\bevent_type\b"), "event"),
    (re.compile(r"\buser_id\b"), "userId"),
    (re.compile(r"\bevent_id\b"), "messageId"),
    (re.compile(r"\bmetadata\b"), "context"),
)


def _caller_words(reason: str, kind: str) -> str:
    for pattern, name in _FIELDS:
        reason = pattern.sub(name, reason)
    return re.sub(r"\bpayload\b", "traits" if kind == "identify" else "properties", reason)


def _timestamp(value: Any, now_ms: int) -> int:
    if value is None:
        return now_ms
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value).timestamp() * 1000)
        except ValueError:
            pass
    raise BadCall("bad_timestamp", "timestamp: an ISO 8601 time or epoch milliseconds")


def _object(call: dict[str, Any], name: str) -> dict[str, Any]:
    value = object_field(call, name)
    if isinstance(value, Invalid):
        raise BadCall(value.code, f"{name}: must be an object")
    return value


def to_event(
    call: Any,
    kind: str | None,
    tenant: str,
    now_ms: int,
    max_bytes: int,
    limits: Limits,
) -> tuple[bytes, Event]:
    """The event a call makes, as the bytes to produce and as read back; ``kind`` is the
    endpoint's (None in a batch: the call's ``type``). Raises BadCall."""
    if not isinstance(call, dict):
        raise BadCall("not_object", "a call must be a JSON object")
    kind = kind or call.get("type")
    if kind not in KINDS:
        raise BadCall("bad_type", f"type: one of {', '.join(KINDS)}")
    user_id = call.get("userId")
    if user_id is None:
        raise BadCall(
            "no_user_id",
            "userId: required (mailstream keeps state per user; anonymousId alone is not taken)",
        )
    event_type = "identify" if kind == "identify" else call.get("event")
    if kind == "track" and event_type is None:
        raise BadCall("no_event", "event: required for a track call")
    payload = _object(call, "traits" if kind == "identify" else "properties")
    context = _object(call, "context")
    metadata = {"via": "http"}
    if "consent_source" in context:
        metadata["consent_source"] = context["consent_source"]
    message_id = call.get("messageId")
    doc = {
        "event_id": uuid.uuid4().hex if message_id is None else message_id,
        "event_type": event_type,
        "user_id": user_id,
        "timestamp": _timestamp(call.get("timestamp"), now_ms),
        "payload": payload,
        "metadata": metadata,
        "tenant_id": tenant,
    }
    raw = orjson.dumps(doc)
    event = decode_event(raw, max_bytes=max_bytes, default_tenant=tenant, limits=limits)
    if isinstance(event, Invalid):
        raise BadCall(event.code, _caller_words(event.reason, kind))
    return raw, event


def batch_calls(body: Any) -> list[Any]:
    """The calls of a ``batch`` body; raises BadCall."""
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise BadCall("no_batch", "batch: an array of calls is required")
    if not body["batch"]:
        raise BadCall("no_batch", "batch: empty")
    return list(body["batch"])
