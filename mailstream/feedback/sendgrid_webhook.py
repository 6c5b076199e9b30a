"""SendGrid's Signed Event Webhook: ECDSA P-256 with SHA-256 over the timestamp header
followed by the raw body, then a JSON array of events.

https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailstream.config.webhook_settings import SendGridWebhookSettings
from mailstream.exceptions import ConfigError
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
from mailstream.feedback.replay_guard import Claim, event_digest, sendgrid_key
from mailstream.feedback.webhook_base import (
    WebhookRejected,
    WebhookRequest,
    bad_shape,
    email_of,
    epoch_ms,
    fresh,
    ids,
    maybe_str,
    need_str,
    parse_json,
    read_secret,
    trim_reason,
)

__all__ = ["SendGridWebhook", "load_public_key", "parse_events", "verify_signature"]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# "dropped": SendGrid did not even try, because of an earlier event on its own lists.
_DROPPED = {
    "Bounced Address": (BOUNCE, "hard"),
    "Unsubscribed Address": (UNSUBSCRIBE, None),
    "Spam Reporting Address": (COMPLAINT, None),
}


def load_public_key(text: str, config_key: str, variable: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER), or as PEM."""
    key: object = None
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            der = base64.b64decode("".join(text.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        pass
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        # the value is not echoed: a private key pasted here by mistake must not reach a log
        raise ConfigError(
            f"{config_key}: the environment variable {variable} does not hold an ECDSA P-256 "
            "public key; set it to the verification key SendGrid shows under Settings > Mail "
            "Settings > Signed Event Webhook Requests (base64, or PEM)"
        )
    return key


def verify_signature(
    public_key: ec.EllipticCurvePublicKey, headers: Mapping[str, str], body: bytes
) -> int:
    """Check the signature over timestamp + raw body; return the signed timestamp."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise WebhookRejected(
            401,
            "missing_signature",
            f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required: turn on Signed Event "
            "Webhook Requests in SendGrid's Mail Settings",
        )
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise WebhookRejected(401, "bad_signature", f"{TIMESTAMP_HEADER} is not epoch seconds")
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        public_key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise WebhookRejected(
            401,
            "bad_signature",
            "the signature does not match the timestamp and body; check that public_key_env "
            "holds this account's current verification key",
        ) from None
    return int(timestamp)


def _classify(name: str, event: Mapping[str, Any]) -> tuple[str, str | None, str] | None:
    """(kind, bounce, reason) for an event mailstream acts on; None for the others."""
    if name == "bounce":
        # type "bounce" is permanent, "blocked" a temporary refusal; the combined example
        # in SendGrid's reference omits the type, and the event itself means permanent
        bounce = "soft" if event.get("type") == "blocked" else "hard"
        return BOUNCE, bounce, trim_reason(event.get("status"), event.get("reason"))
    if name == "dropped":
        why = event.get("reason")
        found = _DROPPED.get(why) if isinstance(why, str) else None
        if found is None:  # our own mistakes (invalid SMTPAPI header, quota), not feedback
            return None
        return found[0], found[1], trim_reason("dropped:", why)
    if name == "deferred":
        return DEFERRED, None, trim_reason(event.get("response"), event.get("reason"))
    if name == "delivered":
        return DELIVERED, None, ""
    if name == "open":
        # Apple Mail Privacy Protection and the like fetch every image: not a person
        return OPEN, None, "machine open" if event.get("sg_machine_open") is True else ""
    if name == "click":
        return CLICK, None, ""
    if name == "spamreport":
        return COMPLAINT, None, ""
    if name == "unsubscribe":
        return UNSUBSCRIBE, None, ""
    if name == "group_unsubscribe":
        return UNSUBSCRIBE, None, trim_reason("unsubscribe group", event.get("asm_group_id"))
    return None  # processed, group_resubscribe, account events, and any added later


def parse_events(doc: Any) -> list[Feedback]:
    """The feedback in one Event Webhook POST: a JSON array of event objects."""
    if not isinstance(doc, list):
        raise bad_shape("body", "SendGrid posts a JSON array of events")
    found = []
    for index, event in enumerate(doc):
        where = f"event [{index}]"
        if not isinstance(event, dict):
            raise bad_shape(where, "must be an object")
        name = need_str(event, "event", where)
        classified = _classify(name, event)
        if classified is None:
            logger.debug("sendgrid: ignoring a %r event", name)
            continue
        kind, bounce, words = classified
        where = f"{where} ({name})"
        found.append(
            Feedback(
                kind=kind,
                provider="sendgrid",
                at=epoch_ms(event, "timestamp", where),
                email=email_of(need_str(event, "email", where)),
                # custom_args arrive as top-level fields of every event
                **ids(event),
                bounce=bounce,
                reason=words,
                url=maybe_str(event, "url") if kind == CLICK else None,
                # Without SendGrid's id, the event's digest tells a repeat of it (a
                # replay, a retry) from a new one: identical events are one event.
                event_id=maybe_str(event, "sg_event_id") or f"sha256:{event_digest(event)}",
            )
        )
    return found


class SendGridWebhook:
    """Verifies and parses SendGrid Event Webhook requests."""

    name = "sendgrid"

    def __init__(
        self,
        settings: SendGridWebhookSettings,
        env: Mapping[str, str],
        *,
        config_key: str = "webhooks.sendgrid",
    ) -> None:
        self.settings = settings
        key_path = f"{config_key}.public_key_env"
        text = read_secret(
            env,
            settings.public_key_env,
            key_path,
            "the verification key of SendGrid's Signed Event Webhook",
        )
        self._public_key = load_public_key(text, key_path, settings.public_key_env)

    def __repr__(self) -> str:
        return (
            f"SendGridWebhook(public_key_env={self.settings.public_key_env!r}, "
            f"max_age={self.settings.max_age:g})"
        )

    def handle(self, request: WebhookRequest, now: float) -> list[Claim]:
        timestamp = verify_signature(self._public_key, request.headers, request.body)
        fresh(timestamp, now, self.settings.max_age)
        feedback = parse_events(parse_json(request.body, request.content_type))
        # The whole body is signed, so a replay repeats these very events: each is
        # applied once, under its own key.
        until = round((timestamp + self.settings.max_age) * 1000) + 1
        received = round(now * 1000)
        return [Claim((fb,), sendgrid_key(fb.event_id or ""), until, received) for fb in feedback]
