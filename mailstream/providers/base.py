"""The one small interface every email provider implements, and the message it sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    """A fully rendered email, as the delivery agent hands it to a provider."""

    send_id: str
    message_id: str  # "<send_id@domain>", deterministic, so a resend carries the same id
    from_address: str  # "Name <addr@example.com>" or a bare address
    to: str
    subject: str
    text: str
    html: str
    category: str  # "transactional" or "marketing"
    tenant_id: str
    user_id: str
    # extra headers: X-Mailstream-Send-Id, X-Mailstream-User-Id, and for marketing
    # List-Unsubscribe and List-Unsubscribe-Post
    headers: dict[str, str] = field(default_factory=dict)
    reply_to: str | None = None

    @property
    def metadata(self) -> dict[str, str]:
        """What a provider attaches so its webhooks map back to the user and the send."""
        return {"send_id": self.send_id, "user_id": self.user_id, "tenant_id": self.tenant_id}


@dataclass(frozen=True, slots=True)
class Accepted:
    """The provider took the message."""

    provider_message_id: str | None = None


class SendFailure(Exception):
    """A provider refused or could not take a message.

    ``retryable``: try again later (HTTP 429 and 5xx, timeouts, connection errors, SMTP
    4xx); otherwise permanent (HTTP 4xx but 429, SMTP 5xx). ``invalid_recipient``: the
    address itself is bad (the user is then suppressed as a hard bounce).
    ``retry_after``: seconds the provider asked to wait, if it said.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        invalid_recipient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code  # e.g. "http_429", "smtp_550", "timeout", "connection"
        self.message = message[:500]  # the provider's own words, trimmed
        self.retryable = retryable
        self.invalid_recipient = invalid_recipient
        self.retry_after = retry_after


class Provider(Protocol):
    """Sends one message; raises SendFailure when it was not accepted."""

    name: str

    async def start(self) -> None: ...

    async def send(self, message: Message) -> Accepted: ...

    async def close(self) -> None: ...
