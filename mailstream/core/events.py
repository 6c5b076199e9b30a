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
# C0 controls (NUL, TAB, LF, 0x1F ...) and DEL: an id is copied into headers and logs.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(slots=True, frozen=True)
class Limits:
    """How large the payload and metadata of an event may be (``ingest.limits``).

    They keep what an event brings into a user record (traits, a workflow's context)
    small enough to store and to encode: orjson gives up at 254 levels of nesting.
    """

    max_depth: int = 16  # nesting of objects and arrays, the payload itself being 1
    max_keys: int = 256  # in any one object
    max_total_keys: int = 2048  # in the payload and metadata together
    max_string_chars: int = 16_384  # any string value or key
    max_list_items: int = 1_000  # in any one array
    # user records (checked on identify: mailstream.core.user_state.identify_problem)
    max_traits: int = 200
    max_user_record_bytes: int = 131_072


DEFAULT_LIMITS = Limits()


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


def _control_problem(name: str, value: str) -> Invalid | None:
    found = _CONTROL_RE.search(value)
    if found is None:
        return None
    return Invalid(
        "control_character",
        f"{name} holds the control character {found.group()!r} at position {found.start()}:"
        " ids may not contain C0 control characters (NUL, TAB, newlines ...) or DEL",
    )


def _path(parent: str, step: str | int) -> str:
    if isinstance(step, int):
        return f"{parent}[{step}]"
    if len(parent) > 200:  # a path 300 levels deep says no more past its start
        return parent if parent.endswith("...") else parent + "..."
    return f"{parent}.{step}"


def _too_big(what: str, path: str, size: int, limit: int, key: str) -> Invalid:
    return Invalid(
        "over_limit",
        f"{path} {what} {size}, over the limit of {limit} (ingest.limits.{key})",
    )


def within_limits(raw: bytes, limits: Limits) -> bool:
    """True when the bytes of an event are too few to break any of ``limits``, which
    then need no walk: most events. Each count bounds what it stands for from above (a
    brace inside a string only counts one more)."""
    if len(raw) > limits.max_string_chars:
        return False
    keys = raw.count(b":")
    return (
        raw.count(b"{") + raw.count(b"[") <= limits.max_depth  # the event object is one
        and keys <= limits.max_keys
        and keys <= limits.max_total_keys
        and raw.count(b",") < limits.max_list_items
    )


def check_limits(parts: dict[str, dict[str, Any]], limits: Limits) -> Invalid | None:
    """The first value of ``parts`` (name -> object, e.g. payload and metadata) that is
    nested too deep, has too many keys, or holds a string or array too long; None when
    all fit. Iterative, so no input can exhaust the interpreter's stack."""
    total_keys = 0
    # (value, depth, path) still to look at; a 300-deep input stops at max_depth
    todo: list[tuple[Any, int, str]] = [(value, 1, name) for name, value in parts.items()]
    while todo:
        value, depth, path = todo.pop()
        if isinstance(value, str):
            if len(value) > limits.max_string_chars:
                return _too_big(
                    "is a string of", path, len(value), limits.max_string_chars, "max_string_chars"
                )
            continue
        if depth > limits.max_depth and isinstance(value, dict | list):
            return Invalid(
                "over_limit",
                f"{path} is nested {depth} levels deep, over the limit of {limits.max_depth}"
                " (ingest.limits.max_depth)",
            )
        if isinstance(value, dict):
            items: Any = value.items()
            size = len(value)
            if size > limits.max_keys:
                return _too_big("has", path, size, limits.max_keys, "max_keys")
            total_keys += size
            if total_keys > limits.max_total_keys:
                return Invalid(
                    "over_limit",
                    f"payload and metadata have more than {limits.max_total_keys} keys in all"
                    f" (ingest.limits.max_total_keys), counted up to {path}",
                )
        elif isinstance(value, list):
            items = enumerate(value)
            size = len(value)
            if size > limits.max_list_items:
                return _too_big(
                    "is an array of", path, size, limits.max_list_items, "max_list_items"
                )
        else:
            continue
        for step, child in items:
            if isinstance(step, str) and len(step) > limits.max_string_chars:
                return _too_big(
                    "has a key of", path, len(step), limits.max_string_chars, "max_string_chars"
                )
            if isinstance(child, dict | list | str):
                todo.append((child, depth + 1, _path(path, step)))
    return None


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


def object_field(doc: dict[str, Any], name: str) -> dict[str, Any] | Invalid:
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


def _document(raw: bytes | None, max_bytes: int) -> dict[str, Any] | Invalid:
    """The JSON object a message holds, or why it holds none."""
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
    return doc


def _names(doc: dict[str, Any]) -> tuple[str, str, str] | Invalid:
    """The event's id, type and user id, or the first that is wrong."""
    event_id = _string_field(doc, "event_id", MAX_EVENT_ID)
    if isinstance(event_id, Invalid):
        return event_id
    problem = _control_problem("event_id", event_id)
    if problem is not None:
        return problem
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
    problem = _control_problem("user_id", user_id)
    if problem is not None:
        return problem
    return event_id, event_type, user_id


def _tenant(doc: dict[str, Any], default_tenant: str) -> str | Invalid:
    tenant = doc.get("tenant_id")
    if tenant is None:
        return default_tenant
    if not isinstance(tenant, str) or not valid_tenant(tenant):
        # control characters included: the pattern allows none
        return Invalid(
            "bad_tenant", "tenant_id must be 1 to 64 letters, digits or _ . - when present"
        )
    return tenant


def decode_event(
    raw: bytes | None,
    *,
    max_bytes: int,
    default_tenant: str,
    limits: Limits = DEFAULT_LIMITS,
) -> Event | Invalid:
    """Turn the bytes of one Kafka message into an Event, or an Invalid with the reason."""
    doc = _document(raw, max_bytes)
    if isinstance(doc, Invalid):
        return doc
    assert raw is not None  # a document came from it
    names = _names(doc)
    if isinstance(names, Invalid):
        return names
    event_id, event_type, user_id = names
    timestamp = _timestamp(doc)
    if isinstance(timestamp, Invalid):
        return timestamp
    payload = object_field(doc, "payload")
    if isinstance(payload, Invalid):
        return payload
    metadata = object_field(doc, "metadata")
    if isinstance(metadata, Invalid):
        return metadata
    if not within_limits(raw, limits):
        problem = check_limits({"payload": payload, "metadata": metadata}, limits)
        if problem is not None:
            return problem
    tenant = _tenant(doc, default_tenant)
    if isinstance(tenant, Invalid):
        return tenant
    if event_type == IDENTIFY:
        problem = check_traits(payload)
        if problem is not None:
            return problem
    return Event(event_id, event_type, user_id, timestamp, tenant, payload, metadata)
