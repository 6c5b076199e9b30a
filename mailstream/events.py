"""Decode and validate raw event bytes into an Event, or say exactly why not."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from email_validator import EmailNotValidError, validate_email

MAX_EVENT_ID = 128
MAX_USER_ID = 256
MAX_EVENT_TYPE = 128
# Before 2000-01-01 in milliseconds: almost always a timestamp sent in seconds by mistake.
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_TIMESTAMP_MS = 10_000_000_000_000

IDENTIFY = "identify"
KNOWN_TRAITS = ("email", "first_name", "last_name", "timezone", "locale")
CONSENT_FLAGS = ("marketing", "transactional")

_EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]+")
_TENANT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def valid_tenant(tenant: str) -> bool:
    return _TENANT_RE.fullmatch(tenant) is not None


@dataclass(slots=True)
class Event:
    """A valid event. ``payload`` holds the traits for ``identify`` events."""

    event_id: str
    event_type: str
    user_id: str
    timestamp: int
    tenant_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Invalid:
    """Why an event was rejected: a stable ``code`` for metrics and a sentence for people."""

    code: str
    reason: str


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _string_field(doc: dict[str, Any], name: str, max_len: int) -> str | Invalid:
    if name not in doc:
        return Invalid("missing_field", f"{name} is required")
    value = doc[name]
    if not isinstance(value, str):
        return Invalid("wrong_type", f"{name} must be a string, got {_type_name(value)}")
    if not value.strip():
        return Invalid("empty_field", f"{name} must not be empty")
    if len(value) > max_len:
        return Invalid(
            "too_long", f"{name} is {len(value)} characters, over the limit of {max_len}"
        )
    return value


def _timestamp(doc: dict[str, Any]) -> int | Invalid:
    if "timestamp" not in doc:
        return Invalid("missing_field", "timestamp is required (epoch milliseconds)")
    ts = doc["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, int):
        return Invalid(
            "wrong_type",
            f"timestamp must be an integer of epoch milliseconds, got {_type_name(ts)}",
        )
    if ts < MIN_TIMESTAMP_MS:
        return Invalid(
            "bad_timestamp",
            f"timestamp {ts} is before the year 2000: it must be epoch milliseconds, not seconds",
        )
    if ts > MAX_TIMESTAMP_MS:
        return Invalid("bad_timestamp", f"timestamp {ts} is too far in the future for epoch ms")
    return ts


def _object_field(doc: dict[str, Any], name: str) -> dict[str, Any] | Invalid:
    value = doc.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        return Invalid("wrong_type", f"{name} must be an object, got {_type_name(value)}")
    return value


def normalise_email(address: str) -> str:
    """The form used for matching: trimmed and lower-cased."""
    return address.strip().lower()


@functools.lru_cache(maxsize=16_384)
def _email_problem(address: str) -> str | None:
    """Why an address is not valid (None: it is). Users identify again and again with
    the same address, and checking one costs more than the rest of its event."""
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def check_traits(traits: dict[str, Any]) -> Invalid | None:
    """Validate the traits an ``identify`` carries; None when they are fine."""
    for name in ("first_name", "last_name", "locale"):
        value = traits.get(name)
        if value is not None and not isinstance(value, str):
            return Invalid("bad_trait", f"payload.{name} must be a string, got {_type_name(value)}")
    email = traits.get("email")
    if email is not None:
        if not isinstance(email, str):
            return Invalid("bad_email", f"payload.email must be a string, got {_type_name(email)}")
        problem = _email_problem(email.strip())
        if problem is not None:
            return Invalid("bad_email", f"payload.email {email[:80]!r} is not valid: {problem}")
    tz = traits.get("timezone")
    if tz is not None:
        if not isinstance(tz, str):
            return Invalid(
                "bad_timezone", f"payload.timezone must be a string, got {_type_name(tz)}"
            )
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: a zone directory such as 'America', or a name too long for a path.
            return Invalid(
                "bad_timezone",
                f"payload.timezone {tz[:80]!r} is not an IANA time zone such as 'Europe/Paris'",
            )
    consent = traits.get("consent")
    if consent is not None:
        if not isinstance(consent, dict):
            return Invalid(
                "bad_consent", f"payload.consent must be an object, got {_type_name(consent)}"
            )
        for flag, value in consent.items():
            if value is not None and not isinstance(value, bool):
                return Invalid(
                    "bad_consent",
                    f"payload.consent.{flag} must be true, false or null, got {_type_name(value)}",
                )
    return None


def decode_event(raw: bytes | None, *, max_bytes: int, default_tenant: str) -> Event | Invalid:
    """Turn the bytes of one Kafka message into an Event, or an Invalid with the reason."""
    if raw is None:
        return Invalid("not_json", "message has no value (a tombstone), expected a JSON event")
    if len(raw) > max_bytes:
        return Invalid(
            "too_large",
            f"event is {len(raw)} bytes, over the limit of {max_bytes} (ingest.max_event_bytes)",
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid("not_json", f"not valid JSON: {exc}")
    if not isinstance(doc, dict):
        return Invalid("not_object", f"event must be a JSON object, got {_type_name(doc)}")

    event_id = _string_field(doc, "event_id", MAX_EVENT_ID)
    if isinstance(event_id, Invalid):
        return event_id
    event_type = _string_field(doc, "event_type", MAX_EVENT_TYPE)
    if isinstance(event_type, Invalid):
        return event_type
    if not _EVENT_TYPE_RE.fullmatch(event_type):
        return Invalid(
            "bad_event_type",
            f"event_type {event_type[:80]!r} may hold only letters, digits and _ . : -",
        )
    user_id = _string_field(doc, "user_id", MAX_USER_ID)
    if isinstance(user_id, Invalid):
        return user_id
    timestamp = _timestamp(doc)
    if isinstance(timestamp, Invalid):
        return timestamp
    payload = _object_field(doc, "payload")
    if isinstance(payload, Invalid):
        return payload
    metadata = _object_field(doc, "metadata")
    if isinstance(metadata, Invalid):
        return metadata
    tenant = doc.get("tenant_id")
    if tenant is None:
        tenant = default_tenant
    elif not isinstance(tenant, str) or not valid_tenant(tenant):
        return Invalid(
            "bad_tenant", "tenant_id must be 1 to 64 letters, digits or _ . - when present"
        )
    if event_type == IDENTIFY:
        problem = check_traits(payload)
        if problem is not None:
            return problem
    return Event(event_id, event_type, user_id, timestamp, tenant, payload, metadata)
