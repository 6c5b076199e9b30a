"""SendGrid's v3 Mail Send API: ``POST /v3/mail/send``, JSON, ``Authorization: Bearer KEY``.

https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

from pydantic import SecretStr

from mailstream.config.provider_settings import SendGridSettings
from mailstream.providers.base import Accepted, Message, SendFailure
from mailstream.providers.http_common import (
    JSON,
    HttpProvider,
    HttpRequest,
    HttpResponse,
    HttpSession,
    body_text,
    classify_http,
    custom_headers,
    parse_reset_epoch,
    parse_retry_after,
    read_json,
)

__all__ = ["SendGridProvider", "SendGridSettings", "build_request", "classify", "accepted"]

logger = logging.getLogger(__name__)

# A 400 whose error names the recipient's address field, e.g. "Does not contain a valid
# address." for personalizations.0.to.0.email
_TO_FIELD = re.compile(r"^personalizations\.\d+\.to\.\d+\.email$")


def _address(text: str) -> dict[str, str]:
    name, email = parseaddr(text)
    if not email:  # parseaddr gives up on some odd input; SendGrid will say what is wrong
        return {"email": text}
    return {"email": email, "name": name} if name else {"email": email}


def build_request(message: Message, settings: SendGridSettings) -> HttpRequest:
    """The mail/send call for ``message``, without the API key."""
    content = []
    # SendGrid wants text/plain first, then text/html, and no empty values
    if message.text:
        content.append({"type": "text/plain", "value": message.text})
    if message.html:
        content.append({"type": "text/html", "value": message.html})
    body: dict[str, Any] = {
        # custom_args come back as top-level fields of every Event Webhook event
        "personalizations": [{"to": [_address(message.to)], "custom_args": message.metadata}],
        "from": _address(message.from_address),
        "subject": message.subject,
        "content": content,
        "headers": dict(custom_headers(message)),
    }
    if message.reply_to:
        body["reply_to"] = _address(message.reply_to)
    if message.category:
        body["categories"] = [message.category]
    return HttpRequest("/v3/mail/send", {"Content-Type": JSON}, body)


def classify(
    status: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None
) -> SendFailure:
    """The failure for an error answer; ``{"errors": [{"message", "field", "help"}]}``."""
    now = now or datetime.now(UTC)
    data = read_json(body) or {}
    errors = [e for e in data.get("errors") or [] if isinstance(e, dict)]
    parts = []
    invalid = False
    for error in errors:
        message = str(error.get("message") or "").strip()
        field = error.get("field")
        if isinstance(field, str) and field:
            parts.append(f"{message} ({field})")
            invalid = invalid or bool(_TO_FIELD.match(field))
        else:
            parts.append(message)
    text = "; ".join(p for p in parts if p) or body_text(body)
    retry_after = parse_retry_after(headers.get("Retry-After"), now)
    if retry_after is None and status == 429:
        retry_after = parse_reset_epoch(headers.get("X-RateLimit-Reset"), now)
    return classify_http(status, retry_after, None, text, status == 400 and invalid)


def accepted(headers: Mapping[str, str]) -> Accepted:
    """202 with an empty body; the id is the ``X-Message-Id`` header."""
    return Accepted(headers.get("X-Message-Id") or None)


class SendGridProvider(HttpProvider):
    """Sends through SendGrid's v3 Mail Send endpoint."""

    name = "sendgrid"
    key_what = "SendGrid API key"
    settings: SendGridSettings

    def __repr__(self) -> str:
        return (
            f"SendGridProvider(base_url={self.settings.base_url!r}, "
            f"api_key_env={self.settings.api_key_env!r})"
        )

    def _open(self) -> HttpSession:
        key = self._read_key()
        bearer = SecretStr(f"Bearer {key.get_secret_value()}")
        return HttpSession(
            self.settings.base_url, self.settings.timeout, auth_headers={"Authorization": bearer}
        )

    def _request(self, message: Message) -> HttpRequest:
        return build_request(message, self.settings)

    def _accepted(self, response: HttpResponse) -> Accepted | None:
        return accepted(response.headers) if 200 <= response.status <= 299 else None

    def _refusal(self, response: HttpResponse) -> SendFailure:
        return classify(response.status, response.headers, response.body)
