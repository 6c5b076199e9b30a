"""A user's own suppressions over time: how one starts, who may lift it, and the history
of both that the user's page shows.

A suppression stops mail until it is lifted, and who may lift it depends on why it is
there:

- ``unsubscribe``: the user themselves, by opting in again (an identify granting
  ``consent.marketing`` with ``metadata.consent_source: "user"``, the mark of their own
  act: a preference page, an app's settings screen), or an operator;
- ``hard_bounce``, ``complaint`` (and the operator's own entries): an operator only
  (``mailstream suppress lift``, ``POST /api/users/{id}/suppressions/lift``). An address
  that bounced or a recipient who complained is not mailed again because a form said so.

Every suppression and every lift is kept in the user's ``suppression_log`` with its
source, time and note, the most recent ``HISTORY`` of them. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mailstream.suppression.entries import Suppression

if TYPE_CHECKING:
    from mailstream.core.user_state import UserState

# Suppressions the user may lift by their own act; an operator may lift any.
LIFTED_BY_USER = frozenset({"unsubscribe"})
# What marks an identify's consent change as the user's own act.
CONSENT_SOURCE = "consent_source"
BY_USER = "user"
# Entries of the history kept per user, oldest dropped first.
HISTORY = 50
SUPPRESSED, LIFTED = "suppressed", "lifted"
# How a history entry (a list, to keep records small) reads as fields.
LOG_FIELDS = ("at", "action", "reason", "source", "note")


def _log(user: UserState, at: int, action: str, reason: str, source: str, note: str) -> None:
    user.suppression_log.append([at, action, reason, source, note])
    del user.suppression_log[:-HISTORY]


def suppress(user: UserState, reason: str, source: str, at: int, note: str = "") -> bool:
    """Suppress ``user`` for ``reason``; False (and nothing changed) if they already are:
    the first suppression's time and source stay."""
    if reason in user.suppressions:
        return False
    user.suppressions[reason] = Suppression(reason, source, at)
    _log(user, at, SUPPRESSED, reason, source, note)
    return True


def lift(
    user: UserState,
    reasons: Iterable[str] | None,
    source: str,
    at: int,
    note: str = "",
    by_user: bool = False,
) -> list[str]:
    """Lift ``user``'s suppressions for ``reasons`` (None: every one there is); returns
    the reasons lifted. By the user's own act (``by_user``) only those in
    ``LIFTED_BY_USER`` are; the others stay, for an operator to lift."""
    wanted = list(user.suppressions) if reasons is None else list(reasons)
    lifted: list[str] = []
    for reason in wanted:
        if reason not in user.suppressions or (by_user and reason not in LIFTED_BY_USER):
            continue
        del user.suppressions[reason]
        _log(user, at, LIFTED, reason, source, note)
        lifted.append(reason)
    return lifted


def opted_in_by_user(payload: dict[str, Any], metadata: dict[str, Any]) -> bool:
    """Whether an identify grants marketing consent as the user's own act."""
    consent = payload.get("consent")
    granted = isinstance(consent, dict) and consent.get("marketing") is True
    return granted and metadata.get(CONSENT_SOURCE) == BY_USER


def history(user: UserState) -> list[dict[str, Any]]:
    """The user's suppressions and lifts, oldest first, as the API shows them."""
    return [dict(zip(LOG_FIELDS, entry, strict=True)) for entry in user.suppression_log]
