"""What every provider webhook shares: the request, the refusal, and the small readers
that turn a provider's JSON into Feedback fields or a 400 naming the field."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from mailstream.exceptions import ConfigError
from mailstream.feedback.replay_guard import Claim

logger = logging.getLogger(__name__)

# The caller refuses larger bodies with 413 before a handler sees them.
MAX_BODY = 1_000_000
REASON_LIMIT = 500


class WebhookRejected(Exception):
    """A webhook request refused: ``status`` to answer, ``reason`` a short metric label
    (bad_signature, missing_signature, stale, not_json, bad_shape, too_large,
    unauthorized), ``detail`` what was wrong, for the response body and the log."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


class Headers(Mapping[str, str]):
    """Read-only request headers looked up case-insensitively. Its repr names the headers
    but never shows a value: Authorization carries credentials."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._items = {name.lower(): value for name, value in headers.items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._items)})"


@dataclass(frozen=True, repr=False)
class WebhookRequest:
    """One POST to a webhook URL, as the web layer received it."""

    headers: Mapping[str, str]
    body: bytes
    content_type: str

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            object.__setattr__(self, "headers", Headers(self.headers))

    def __repr__(self) -> str:
        return (
            f"WebhookRequest(headers={self.headers!r}, body=<{len(self.body)} bytes>, "
            f"content_type={self.content_type!r})"
        )


class WebhookHandler(Protocol):
    """Verifies one provider's webhook request, then parses it into feedback, as claims:
    each with the replay key it may be applied under once (mailstream.feedback.replay_guard)."""

    name: str

    def handle(self, request: WebhookRequest, now: float) -> list[Claim]: ...


def read_secret(env: Mapping[str, str], variable: str, config_key: str, what: str) -> str:
    """``env[variable]``; ConfigError naming the config key and the variable if unset."""
    value = env.get(variable, "").strip()
    if not value:
        state = "is empty" if variable in env else "is not set"
        raise ConfigError(
            f"{config_key}: the environment variable {variable} {state}; set it to {what}"
        )
    return value


def fresh(timestamp: int, now: float, max_age: float) -> None:
    """401 stale when a signed timestamp is more than ``max_age`` away from ``now``."""
    if abs(now - timestamp) > max_age:
        raise WebhookRejected(
            401,
            "stale",
            f"the signed timestamp {timestamp} is {now - timestamp:+.0f}s from our clock, "
            f"more than the {max_age:g}s allowed; check both clocks or raise max_age",
        )


def parse_json(body: bytes, content_type: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WebhookRejected(
            400, "not_json", f"the body ({content_type or 'no content type'}) is not JSON: {exc}"
        ) from None


def bad_shape(where: str, problem: str) -> WebhookRejected:
    return WebhookRejected(400, "bad_shape", f"{where}: {problem}")


def need_str(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise bad_shape(where, f"{key!r} must be a non-empty string")
    return value


def maybe_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) and value else None


def maybe_object(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """``doc[key]`` if an object, ``{}`` if absent or null; 400 for anything else."""
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_shape(where, f"{key!r} must be an object")
    return value


def epoch_ms(doc: Mapping[str, Any], key: str, where: str) -> int:
    """Epoch seconds given as a number or a string of one -> epoch ms."""
    value = doc.get(key)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad_shape(where, f"{key!r} must be epoch seconds") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise bad_shape(where, f"{key!r} must be epoch seconds")
    return round(value * 1000)


def iso_ms(doc: Mapping[str, Any], key: str, where: str) -> int:
    """An ISO 8601 time (UTC when it names no offset) -> epoch ms."""
    value = need_str(doc, key, where)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise bad_shape(where, f"{key!r} must be an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)


def ids(metadata: Mapping[str, Any]) -> dict[str, str | None]:
    """user_id, tenant_id and send_id from the metadata mailstream attached to the send."""
    found: dict[str, str | None] = {}
    for key in ("user_id", "tenant_id", "send_id"):
        value = metadata.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        found[key] = value if isinstance(value, str) and value else None
    return found


def email_of(value: str) -> str:
    return value.strip().lower()


def trim_reason(*parts: object) -> str:
    """The provider's words, on one line, at most REASON_LIMIT characters."""
    text = " ".join(" ".join(str(p).split()) for p in parts if p not in (None, ""))
    return text[:REASON_LIMIT]
