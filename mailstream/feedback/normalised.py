"""Feedback from providers and recipients, normalised: what happened to a sent message.

Provider webhooks (mailstream.feedback.provider_webhooks) and one-click unsubscribes
produce these; the feedback agent applies them to the user and the send's delivery record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from mailstream.core.user_state import UserState
from mailstream.suppression import lifecycle
from mailstream.suppression.entries import Suppression, normalise_address

BOUNCE = "bounce"
COMPLAINT = "complaint"
UNSUBSCRIBE = "unsubscribe"
DELIVERED = "delivered"
DEFERRED = "deferred"
OPEN = "open"
CLICK = "click"
# an operator lifting a user's suppressions (mailstream suppress lift, the API)
LIFT = "lift"
KINDS = (BOUNCE, COMPLAINT, UNSUBSCRIBE, DELIVERED, DEFERRED, OPEN, CLICK, LIFT)


@dataclass(frozen=True, slots=True)
class Feedback:
    kind: str  # one of KINDS
    provider: str  # "sendgrid", "mailgun", "postmark", or "one-click" for the link
    at: int  # epoch ms the provider says it happened
    email: str | None = None  # the recipient, lower-cased
    user_id: str | None = None  # from the metadata mailstream attached, when present
    tenant_id: str | None = None
    send_id: str | None = None
    bounce: str | None = None  # for BOUNCE: "hard" or "soft"
    reason: str = ""  # the provider's words (bounce diagnostics, complaint type), trimmed
    url: str | None = None  # for CLICK
    lifts: str | None = None  # for LIFT: the suppression reason lifted (None: every one)
    event_id: str | None = None  # the provider's id of this event, when it has one

    def key(self) -> bytes | None:
        """The topic key: the user id, so feedback lands on the user's partition."""
        return self.user_id.encode() if self.user_id else None

    def encode(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items() if v not in (None, "")})

    @classmethod
    def decode(cls, raw: bytes) -> Feedback:
        return cls.from_json(orjson.loads(raw))

    @classmethod
    def from_json(cls, doc: Any) -> Feedback:
        if not isinstance(doc, dict):
            raise ValueError("feedback must be a JSON object")
        if doc.get("kind") not in KINDS:
            raise ValueError(f"unknown feedback kind {doc.get('kind')!r}")
        return cls(**doc)


# Feedback naming only an address: these kinds go to the global list by address instead.
BY_ADDRESS = {COMPLAINT: "complaint", UNSUBSCRIBE: "unsubscribe"}


def destination(
    fb: Feedback, feedback_topic: str, suppression_topic: str
) -> tuple[str, bytes, bytes] | None:
    """Where a feedback event is sent, as (topic, key, value): the feedback topic keyed by
    the user, so the user's own worker applies it; failing a user, the global suppression
    list keyed by address, for what suppresses; None when it has nowhere to go."""
    key = fb.key()
    if key is not None:
        return feedback_topic, key, fb.encode()
    address = normalise_address(fb.email or "")
    reason = "hard_bounce" if fb.kind == BOUNCE and fb.bounce == "hard" else BY_ADDRESS.get(fb.kind)
    if address is None or reason is None:
        return None
    entry = Suppression(reason, f"webhook:{fb.provider}", fb.at)
    return suppression_topic, address.encode(), entry.encode()


@dataclass(frozen=True, slots=True)
class FeedbackSettings:
    soft_bounces: int = 3  # this many soft bounces ...
    soft_bounce_window_ms: int = 7 * 86_400_000  # ... within this long count as a hard one


# Engagement traits the feedback sets, usable in conditions as user.<name>.
ENGAGEMENT_TRAITS = {DELIVERED: "last_delivered", OPEN: "last_open", CLICK: "last_click"}


def apply_feedback(user: UserState, fb: Feedback, settings: FeedbackSettings) -> str | None:
    """Fold one feedback event into the user's state; returns what it did (a short label
    for the metrics), or None when it changed nothing."""
    source = f"{fb.provider}:{fb.kind}"
    if fb.kind == BOUNCE and fb.bounce == "hard":
        return _suppress(user, "hard_bounce", source, fb.at)
    if fb.kind == BOUNCE:
        cutoff = fb.at - settings.soft_bounce_window_ms
        recent = [t for t in user.soft_bounces if t > cutoff] + [fb.at]
        user.soft_bounces = recent[-settings.soft_bounces :]
        if len(recent) >= settings.soft_bounces:
            return _suppress(user, "hard_bounce", f"{fb.provider}:soft_bounces", fb.at)
        return "soft_bounce"
    if fb.kind == COMPLAINT:
        return _suppress(user, "complaint", source, fb.at)
    if fb.kind == UNSUBSCRIBE:
        return _suppress(user, "unsubscribe", source, fb.at)
    if fb.kind == LIFT:
        reasons = None if fb.lifts is None else [fb.lifts]
        lifted = lifecycle.lift(user, reasons, f"operator:{fb.provider}", fb.at, fb.reason)
        return LIFT if lifted else None
    trait = ENGAGEMENT_TRAITS.get(fb.kind)
    if trait is not None:
        current = user.traits.get(trait)
        if not isinstance(current, int) or fb.at > current:
            user.traits[trait] = fb.at
        return fb.kind
    return None  # deferred: only the delivery record notes it


def _suppress(user: UserState, reason: str, source: str, at: int) -> str | None:
    return reason if lifecycle.suppress(user, reason, source, at) else None
