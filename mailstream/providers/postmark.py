"""Postmark's single-email API: ``POST /email``, JSON, ``X-Postmark-Server-Token``.

https://postmarkapp.com/developer/api/email-api
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from mailstream.config.provider_settings import PostmarkSettings
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
    parse_retry_after,
    read_json,
)

__all__ = ["PostmarkProvider", "PostmarkSettings", "build_request", "classify", "accepted"]

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Postmark-Server-Token"  # noqa: S105 - a header name, not a token

# ErrorCode 406: the recipient is inactive (an earlier hard bounce, complaint or manual
# suppression). ErrorCode 300 is every validation failure of the request; only its
# "Invalid 'To' address" / "Error parsing 'To'" messages are about the address, the rest
# (an unverified From, metadata too long, ...) are our mistakes, not the user's.
INACTIVE_RECIPIENT = 406
INVALID_REQUEST = 300
MAINTENANCE = 100
_TO_ERROR = re.compile(r"\b(invalid|error parsing) '(to|cc|bcc)'", re.IGNORECASE)


def build_request(message: Message, settings: PostmarkSettings) -> HttpRequest:
    """The ``/email`` call for ``message``, without the server token."""
    stream = (
        settings.message_stream_marketing
        if message.category == "marketing"
        else settings.message_stream_transactional
    )
    body: dict[str, object] = {
        "From": message.from_address,
        "To": message.to,
        "Subject": message.subject,
    }
    # Postmark wants at least one body and refuses an empty one
    if message.text:
        body["TextBody"] = message.text
    if message.html:
        body["HtmlBody"] = message.html
    if message.reply_to:
        body["ReplyTo"] = message.reply_to
    if message.category:
        body["Tag"] = message.category
    body["Headers"] = [{"Name": n, "Value": v} for n, v in custom_headers(message)]
    # comes back on bounce, delivery, open and click webhooks
    body["Metadata"] = message.metadata
    body["MessageStream"] = stream
    return HttpRequest("/email", {"Accept": JSON, "Content-Type": JSON}, body)


def classify(
    status: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None
) -> SendFailure:
    """The failure for an error answer; ``{"ErrorCode": n, "Message": "..."}`` when JSON."""
    data = read_json(body) or {}
    error_code = data.get("ErrorCode")
    message = data.get("Message")
    text = message if isinstance(message, str) else body_text(body)
    invalid = status == 422 and (
        error_code == INACTIVE_RECIPIENT
        or (error_code == INVALID_REQUEST and bool(_TO_ERROR.search(text)))
    )
    retry_after = parse_retry_after(headers.get("Retry-After"), now or datetime.now(UTC))
    return classify_http(
        status,
        retry_after,
        f"ErrorCode {error_code}" if isinstance(error_code, int) else None,
        text,
        invalid,
        retryable=True if error_code == MAINTENANCE else None,
    )


def accepted(body: bytes) -> Accepted:
    """``{"MessageID": "...", "ErrorCode": 0, ...}`` -> Accepted(MessageID)."""
    data = read_json(body) or {}
    message_id = data.get("MessageID")
    return Accepted(message_id if isinstance(message_id, str) else None)


class PostmarkProvider(HttpProvider):
    """Sends through Postmark's single-email endpoint."""

    name = "postmark"
    key_what = "Postmark server token"
    settings: PostmarkSettings

    def __repr__(self) -> str:
        return (
            f"PostmarkProvider(base_url={self.settings.base_url!r}, "
            f"api_key_env={self.settings.api_key_env!r})"
        )

    def _open(self) -> HttpSession:
        token = self._read_key()
        return HttpSession(
            self.settings.base_url, self.settings.timeout, auth_headers={TOKEN_HEADER: token}
        )

    def _request(self, message: Message) -> HttpRequest:
        return build_request(message, self.settings)

    def _accepted(self, response: HttpResponse) -> Accepted | None:
        return accepted(response.body) if response.status == 200 else None

    def _refusal(self, response: HttpResponse) -> SendFailure:
        return classify(response.status, response.headers, response.body)
