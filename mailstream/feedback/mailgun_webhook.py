"""Mailgun webhooks: a JSON object whose ``signature`` block is an HMAC-SHA256 of timestamp
+ token under the HTTP webhook signing key, and whose ``event-data`` is one event.

https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks
https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

from mailstream.config.webhook_settings import MailgunWebhookSettings
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
from mailstream.feedback.replay_guard import Claim, mailgun_key
from mailstream.feedback.webhook_base import (
    WebhookRejected,
    WebhookRequest,
    bad_shape,
    email_of,
    epoch_ms,
    fresh,
    ids,
    maybe_object,
    maybe_str,
    need_str,
    parse_json,
    read_secret,
    trim_reason,
)

__all__ = ["MailgunWebhook", "parse_event_data"]

logger = logging.getLogger(__name__)

_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
_SIMPLE = {
    "delivered": DELIVERED,
    "opened": OPEN,
    "clicked": CLICK,
    "complained": COMPLAINT,
    "unsubscribed": UNSUBSCRIBE,
}


def _signer(key: bytes) -> Callable[[bytes], bytes]:
    """The hex HMAC under ``key``, kept in a closure so no attribute or repr shows it."""
    return lambda message: hmac.new(key, message, hashlib.sha256).hexdigest().encode()


def _smtp_code(status: Mapping[str, Any]) -> int | None:
    code = status.get("code")
    if isinstance(code, str) and code.isascii() and code.isdigit():
        return int(code)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _failed(data: Mapping[str, Any], where: str) -> tuple[str, str | None, str] | None:
    severity = need_str(data, "severity", where)
    status = maybe_object(data, "delivery-status", where)
    why = maybe_str(data, "reason")  # Mailgun's own word: bounce, suppress-bounce, generic...
    code = _smtp_code(status)
    words = trim_reason(
        f"{why}:" if why else None,
        code,
        maybe_str(status, "message") or maybe_str(status, "description"),
    )
    if severity == "temporary":
        # Mailgun retries a temporary failure itself (the Stats API: "failed temporary ...
        # will be retried"; Tracking Bounces: it retries immediate soft bounces), so the
        # message is not lost yet: a deferral, whatever the receiving server answered. If
        # Mailgun gives up, a permanent failure follows and is handled below.
        return DEFERRED, None, words
    if severity != "permanent":
        logger.warning("mailgun: ignoring a failed event of severity %r", severity)
        return None
    # Permanent failures also cover mail Mailgun would not send because of its own lists
    # (Stats API: suppress-bounce, suppress-unsubscribe, suppress-complaint).
    if why == "suppress-unsubscribe":
        return UNSUBSCRIBE, None, words
    if why == "suppress-complaint":
        return COMPLAINT, None, words
    # A permanent failure whose last answer was 4xx is Mailgun giving up after retrying
    # (a full mailbox for hours): soft, unlike a 5xx "no such user". Newer payloads say so
    # outright in delivery-status.bounce-type.
    bounce_type = status.get("bounce-type")
    if bounce_type not in ("hard", "soft"):
        bounce_type = "soft" if code is not None and 400 <= code < 500 else "hard"
    return BOUNCE, bounce_type, words


def parse_event_data(data: Any) -> list[Feedback]:
    """The feedback in one webhook's ``event-data``: none or one event."""
    if not isinstance(data, dict):
        raise bad_shape("event-data", "must be an object")
    name = need_str(data, "event", "event-data")
    where = f"event-data ({name})"
    if name == "failed":
        classified = _failed(data, where)
    elif name in _SIMPLE:
        classified = _SIMPLE[name], None, ""
    else:  # accepted, rejected, stored, list events, and any added later
        logger.debug("mailgun: ignoring a %r event", name)
        classified = None
    if classified is None:
        return []
    kind, bounce, words = classified
    return [
        Feedback(
            kind=kind,
            provider="mailgun",
            at=epoch_ms(data, "timestamp", where),
            email=email_of(need_str(data, "recipient", where)),
            # the v: variables given at send time come back as user-variables
            **ids(maybe_object(data, "user-variables", where)),
            bounce=bounce,
            reason=words,
            url=maybe_str(data, "url") if kind == CLICK else None,
            event_id=maybe_str(data, "id"),
        )
    ]


class MailgunWebhook:
    """Verifies and parses Mailgun webhook requests. The signature covers only timestamp
    + token, so whatever the body says is applied under the token's replay key: once."""

    name = "mailgun"

    def __init__(
        self,
        settings: MailgunWebhookSettings,
        env: Mapping[str, str],
        *,
        config_key: str = "webhooks.mailgun",
    ) -> None:
        self.settings = settings
        key = read_secret(
            env,
            settings.signing_key_env,
            f"{config_key}.signing_key_env",
            "the HTTP webhook signing key from Mailgun's Webhooks page",
        )
        self._sign = _signer(key.encode())

    def __repr__(self) -> str:
        return (
            f"MailgunWebhook(signing_key_env={self.settings.signing_key_env!r}, "
            f"max_age={self.settings.max_age:g})"
        )

    def _verify(self, block: Any) -> tuple[int, str]:
        """Check the signature block; return the signed timestamp and the token."""
        if not isinstance(block, dict):
            raise WebhookRejected(401, "missing_signature", "the body has no 'signature' object")
        timestamp, token = block.get("timestamp"), block.get("token")
        if isinstance(timestamp, int) and not isinstance(timestamp, bool):
            timestamp = str(timestamp)
        signatures = [block.get("signature"), block.get("parent-signature")]
        given = [s.encode() for s in signatures if isinstance(s, str) and s]
        if not (
            isinstance(timestamp, str)
            and timestamp.isascii()
            and timestamp.isdigit()
            and isinstance(token, str)
            and token
            and given
        ):
            raise WebhookRejected(
                401,
                "missing_signature",
                "signature.timestamp, signature.token and signature.signature are required",
            )
        expected = self._sign((timestamp + token).encode())
        # A subaccount's events carry the parent account's signature as well, so one key
        # (either account's) verifies them. Every candidate is compared, in constant time.
        matched = False
        for signature in given:
            matched |= hmac.compare_digest(expected, signature)
        if not matched:
            raise WebhookRejected(
                401,
                "bad_signature",
                "the signature does not match; check that signing_key_env holds the HTTP "
                "webhook signing key (not the API key)",
            )
        return int(timestamp), token

    def handle(self, request: WebhookRequest, now: float) -> list[Claim]:
        if request.content_type.split(";")[0].strip().lower() in _FORMS:
            raise WebhookRejected(
                400,
                "not_json",
                "this is a legacy form-encoded Mailgun webhook; use Mailgun's current "
                "webhooks, which post JSON",
            )
        doc = parse_json(request.body, request.content_type)
        if not isinstance(doc, dict):
            raise bad_shape("body", "Mailgun posts an object with 'signature' and 'event-data'")
        timestamp, token = self._verify(doc.get("signature"))
        fresh(timestamp, now, self.settings.max_age)
        feedback = parse_event_data(doc.get("event-data"))
        # The token is claimed even when the event is one mailstream ignores: its
        # signature block would otherwise carry a new body unchallenged.
        fresh_until = round((timestamp + self.settings.max_age) * 1000)
        return [Claim(tuple(feedback), mailgun_key(token), fresh_until + 1, round(now * 1000))]
