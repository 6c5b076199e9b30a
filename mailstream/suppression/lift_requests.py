"""An operator's request to lift a user's suppressions, as the feedback it becomes: the
user's own worker applies it (mailstream.feedback.normalised, kind ``lift``), under the
rules of mailstream.suppression.lifecycle, and keeps it in the user's history."""

from __future__ import annotations

import uuid
from typing import Any

from mailstream.exceptions import MailstreamError
from mailstream.feedback.normalised import LIFT, Feedback
from mailstream.suppression.entries import REASON_SCOPES

MAX_NOTE = 500  # characters of the operator's reason kept in the history


class BadLift(MailstreamError):
    """A lift request that cannot be taken; the message names the field."""


def lift_request(user_id: Any, tenant_id: Any, note: Any, only: Any, by: str, at: int) -> Feedback:
    """The feedback lifting ``user_id``'s suppressions (``only`` one reason, or every one),
    with the operator's ``note``; ``by`` says through what (``cli``, ``api``)."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise BadLift("user_id: the user whose suppressions to lift is needed")
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
        raise BadLift("tenant: must be a tenant id")
    if not isinstance(note, str) or not note.strip():
        raise BadLift("reason: say why the suppression is lifted (kept in the user's history)")
    if len(note) > MAX_NOTE:
        raise BadLift(f"reason: at most {MAX_NOTE} characters")
    if only is not None and only not in REASON_SCOPES:
        raise BadLift(f"only: {only!r} is not one of {', '.join(REASON_SCOPES)}")
    return Feedback(
        kind=LIFT,
        provider=by,
        at=at,
        user_id=user_id,
        tenant_id=tenant_id,
        reason=note.strip(),
        lifts=only,
        event_id=uuid.uuid4().hex,  # a request written twice is applied once
    )
