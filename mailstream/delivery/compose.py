"""From a send command to the message a provider sends: sender, Message-ID, headers."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

from mailstream.delivery.unsubscribe_links import (
    Unsubscribe,
    UnsubscribeTokens,
    list_unsubscribe_headers,
)
from mailstream.providers.base import Message


@dataclass(frozen=True, slots=True)
class Sender:
    from_address: str  # "Shop <hello@shop.example>"
    reply_to: str | None
    message_id_domain: str
    public_url: str  # where /unsubscribe/{token} is served
    unsubscribe_mailto: str | None

    @staticmethod
    def domain_of(address: str) -> str:
        _, addr = parseaddr(address)
        return addr.rpartition("@")[2] or "localhost"


def message_id(send_id: str, domain: str) -> str:
    """Deterministic, so a resent message carries the same id and receivers can tell."""
    return f"<{send_id}@{domain}>"


def compose(command: dict[str, Any], sender: Sender, tokens: UnsubscribeTokens) -> Message:
    headers = dict(command.get("headers") or {})
    if command["category"] == "marketing":
        token = tokens.make(
            Unsubscribe(command["tenant_id"], command["user_id"], "marketing", command["send_id"])
        )
        headers.update(
            list_unsubscribe_headers(token, sender.public_url, sender.unsubscribe_mailto)
        )
    return Message(
        send_id=command["send_id"],
        message_id=message_id(command["send_id"], sender.message_id_domain),
        from_address=sender.from_address,
        to=command["to"],
        subject=command["subject"],
        text=command["text"],
        html=command["html"],
        category=command["category"],
        tenant_id=command["tenant_id"],
        user_id=command["user_id"],
        headers=headers,
        reply_to=sender.reply_to,
    )


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()
