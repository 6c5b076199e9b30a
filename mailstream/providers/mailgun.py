"""Mailgun's send API: ``POST /v3/{domain}/messages``, form fields, basic auth ``api:KEY``.

https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/messages
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from mailstream.config.provider_settings import MailgunSettings
from mailstream.providers.base import Accepted, Message, SendFailure
from mailstream.providers.http_common import (
    FORM,
    HttpProvider,
    HttpRequest,
    HttpResponse,
    HttpSession,
    body_text,
    classify_http,
    parse_retry_after,
    read_json,
)

__all__ = ["MailgunProvider", "MailgunSettings", "build_request", "classify", "accepted"]

logger = logging.getLogger(__name__)

USER = "api"  # Mailgun's basic-auth user name is always "api"

# "'to' parameter is not a valid address. please check documentation"
_TO_ERROR = re.compile(r"'?\bto\b'? parameter is not a valid address", re.IGNORECASE)


def build_request(message: Message, settings: MailgunSettings) -> HttpRequest:
    """The messages call for ``message`` as form fields, without the API key."""
    fields = [
        ("from", message.from_address),
        ("to", message.to),
        ("subject", message.subject),
    ]
    if message.text:
        fields.append(("text", message.text))
    if message.html:
        fields.append(("html", message.html))
    # h: adds a MIME header; Mailgun keeps a Message-Id given this way
    fields.append(("h:Message-Id", message.message_id))
    fields.extend(
        (f"h:{name}", value)
        for name, value in message.headers.items()
        if name.lower() != "message-id"
    )
    if message.reply_to:
        fields.append(("h:Reply-To", message.reply_to))
    if message.category:
        fields.append(("o:tag", message.category))
    # v: user variables come back as "user-variables" on every webhook event
    fields.extend((f"v:{key}", value) for key, value in message.metadata.items())
    return HttpRequest(f"/v3/{settings.domain}/messages", {"Content-Type": FORM}, fields)


def classify(
    status: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None
) -> SendFailure:
    """The failure for an error answer: ``{"message": "..."}``, or plain text (401 Forbidden)."""
    data = read_json(body) or {}
    message = data.get("message")
    text = message if isinstance(message, str) else body_text(body)
    invalid = status == 400 and bool(_TO_ERROR.search(text))
    retry_after = parse_retry_after(headers.get("Retry-After"), now or datetime.now(UTC))
    return classify_http(status, retry_after, None, text, invalid)


def accepted(body: bytes) -> Accepted:
    """``{"id": "<...>", "message": "Queued. Thank you."}`` -> Accepted(id), as given."""
    data = read_json(body) or {}
    message_id = data.get("id")
    return Accepted(message_id if isinstance(message_id, str) else None)


class MailgunProvider(HttpProvider):
    """Sends through Mailgun's messages endpoint for one sending domain."""

    name = "mailgun"
    key_what = "Mailgun API key"
    settings: MailgunSettings

    def __repr__(self) -> str:
        return (
            f"MailgunProvider(base_url={self.settings.base_url!r}, "
            f"domain={self.settings.domain!r}, api_key_env={self.settings.api_key_env!r})"
        )

    def _open(self) -> HttpSession:
        key = self._read_key()
        return HttpSession(self.settings.base_url, self.settings.timeout, basic_auth=(USER, key))

    def _request(self, message: Message) -> HttpRequest:
        return build_request(message, self.settings)

    def _accepted(self, response: HttpResponse) -> Accepted | None:
        return accepted(response.body) if response.status == 200 else None

    def _refusal(self, response: HttpResponse) -> SendFailure:
        return classify(response.status, response.headers, response.body)
