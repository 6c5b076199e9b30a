"""Postmark webhooks: HTTP basic auth with the credentials set on the webhook, then one
JSON object per event, told apart by ``RecordType``.

https://postmarkapp.com/developer/webhooks/webhooks-overview
https://postmarkapp.com/developer/api/bounce-api#bounce-types
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

from mailstream.config.webhook_settings import PostmarkWebhookSettings
from mailstream.feedback.normalised import (
    BOUNCE,
    CLICK,
    COMPLAINT,
    DEFERRED,
    DELIVERED,
    OPEN,
    UNSUBSCRIBE,
    Feedback,
)
from mailstream.feedback.replay_guard import Claim, unguarded
from mailstream.feedback.webhook_base import (
    WebhookRejected,
    WebhookRequest,
    bad_shape,
    email_of,
    ids,
    iso_ms,
    maybe_object,
    maybe_str,
    need_str,
    parse_json,
    read_secret,
    trim_reason,
)

__all__ = ["BOUNCE_TYPES", "PostmarkWebhook", "parse_record"]

logger = logging.getLogger(__name__)

# Postmark's bounce types, by what they say about this message and this address. Types
# absent here (Subscribe, AutoResponder, AddressChange, OpenRelayTest,
# ChallengeVerification, Unconfirmed, SMTPApiError, InboundError, TemplateRenderingFailed)
# are replies or our own errors, not the recipient's mailbox refusing: ignored.
BOUNCE_TYPES: dict[str, tuple[str, str | None]] = {
    # the address does not work, or Postmark will not send to it any more
    "HardBounce": (BOUNCE, "hard"),
    "BadEmailAddress": (BOUNCE, "hard"),
    "ManuallyDeactivated": (BOUNCE, "hard"),
    # not delivered, but the address may work another time
    "SoftBounce": (BOUNCE, "soft"),
    "DnsError": (BOUNCE, "soft"),
    "Blocked": (BOUNCE, "soft"),
    "SpamNotification": (BOUNCE, "soft"),
    "VirusNotification": (BOUNCE, "soft"),
    "DMARCPolicy": (BOUNCE, "soft"),
    "Unknown": (BOUNCE, "soft"),
    # "Message delayed": the receiving server still holds it and keeps trying, so counting
    # it as a soft bounce would count one slow delivery towards suppression
    "Transient": (DEFERRED, None),
    "SpamComplaint": (COMPLAINT, None),
    "Unsubscribe": (UNSUBSCRIBE, None),  # an "unsubscribe or remove" reply
}

# SubscriptionChange.SuppressionReason when SuppressSending is true
_SUPPRESSIONS: dict[str, tuple[str, str | None]] = {
    "HardBounce": (BOUNCE, "hard"),
    "SpamComplaint": (COMPLAINT, None),
    "ManualSuppression": (UNSUBSCRIBE, None),  # the unsubscribe link, or us by API or UI
}


def _basic_auth(username: str, password: str) -> Callable[[str | None], bool]:
    """A check of an Authorization header against the credentials, holding only their
    digests in a closure; equal-length digests make every comparison constant-time."""
    want_user = hashlib.sha256(username.encode()).digest()
    want_password = hashlib.sha256(password.encode()).digest()

    def check(header: str | None) -> bool:
        scheme, _, encoded = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, colon, secret = decoded.partition(":")
        user_ok = hmac.compare_digest(hashlib.sha256(user.encode()).digest(), want_user)
        secret_ok = hmac.compare_digest(hashlib.sha256(secret.encode()).digest(), want_password)
        return bool(colon) & user_ok & secret_ok

    return check


def parse_record(doc: Any) -> list[Feedback]:
    """The feedback in one Postmark webhook POST: none or one event."""
    if not isinstance(doc, dict):
        raise bad_shape("body", "Postmark posts one JSON object per event")
    record = need_str(doc, "RecordType", "body")
    where = f"{record} record"
    bounce: str | None = None
    words = ""
    if record == "Bounce":
        bounce_type = need_str(doc, "Type", where)
        if bounce_type not in BOUNCE_TYPES:
            logger.debug("postmark: ignoring a %r bounce", bounce_type)
            return []
        kind, bounce = BOUNCE_TYPES[bounce_type]
        details = maybe_str(doc, "Details") or maybe_str(doc, "Description")
        words = trim_reason(f"{bounce_type}:", details)
        email, at = need_str(doc, "Email", where), iso_ms(doc, "BouncedAt", where)
    elif record == "SpamComplaint":
        kind, words = COMPLAINT, trim_reason(maybe_str(doc, "Details"))
        email, at = need_str(doc, "Email", where), iso_ms(doc, "BouncedAt", where)
    elif record == "Delivery":
        kind = DELIVERED
        email, at = need_str(doc, "Recipient", where), iso_ms(doc, "DeliveredAt", where)
    elif record in ("Open", "Click"):
        kind = OPEN if record == "Open" else CLICK
        email, at = need_str(doc, "Recipient", where), iso_ms(doc, "ReceivedAt", where)
    elif record == "SubscriptionChange":
        suppress = doc.get("SuppressSending")
        if not isinstance(suppress, bool):
            raise bad_shape(where, "'SuppressSending' must be true or false")
        if not suppress:  # a reactivation: nothing for mailstream to act on
            return []
        why = maybe_str(doc, "SuppressionReason") or ""
        kind, bounce = _SUPPRESSIONS.get(why, (UNSUBSCRIBE, None))
        words = trim_reason(why, f"(by {doc.get('Origin')})" if doc.get("Origin") else None)
        email, at = need_str(doc, "Recipient", where), iso_ms(doc, "ChangedAt", where)
    else:  # inbound and any record type added later
        logger.debug("postmark: ignoring a %r record", record)
        return []
    email = email_of(email)
    # MessageID is null on suppressions made by hand; the address stands in for it then
    message_id = maybe_str(doc, "MessageID") or email
    return [
        Feedback(
            kind=kind,
            provider="postmark",
            at=at,
            email=email,
            # the Metadata given at send time comes back on every record type
            **ids(maybe_object(doc, "Metadata", where)),
            bounce=bounce,
            reason=words,
            url=maybe_str(doc, "OriginalLink") if kind == CLICK else None,
            event_id=f"{message_id}:{record}:{at}",
        )
    ]


class PostmarkWebhook:
    """Checks basic auth on Postmark webhook requests, then parses them."""

    name = "postmark"

    def __init__(
        self,
        settings: PostmarkWebhookSettings,
        env: Mapping[str, str],
        *,
        config_key: str = "webhooks.postmark",
    ) -> None:
        self.settings = settings
        username = read_secret(
            env,
            settings.username_env,
            f"{config_key}.username_env",
            "the username in the Postmark webhook's basic auth",
        )
        password = read_secret(
            env,
            settings.password_env,
            f"{config_key}.password_env",
            "the password in the Postmark webhook's basic auth",
        )
        self._authorised = _basic_auth(username, password)

    def __repr__(self) -> str:
        return (
            f"PostmarkWebhook(username_env={self.settings.username_env!r}, "
            f"password_env={self.settings.password_env!r})"
        )

    def handle(self, request: WebhookRequest, now: float) -> list[Claim]:
        header = request.headers.get("Authorization")
        if not self._authorised(header):
            raise WebhookRejected(
                401,
                "unauthorized",
                "no basic auth given: set the credentials on the Postmark webhook"
                if header is None
                else "the basic auth credentials do not match",
            )
        # No signature to replay: a request needs the credentials, and the event id
        # (message, record type, time) lets the user's worker drop a repeat.
        return unguarded(parse_record(parse_json(request.body, request.content_type)))
