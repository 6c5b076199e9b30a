"""Send policy: suppression, then consent, then frequency caps, then quiet hours.

Every send a workflow makes passes here before it is rendered. ``decide`` is the pure
rule; ``Policy`` applies its answer to the user's state: a send goes on, is dropped, or
is held in the user's record with a durable timer and decided again when that is due.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

from mailstream.core.user_state import UserState
from mailstream.core.windows import (
    Cap,
    QuietHours,
    caps_free_at,
    parse_clock,
    prune_sent,
    quiet_until,
    zone,
)
from mailstream.delivery.send_command import recipient
from mailstream.suppression.entries import Suppression
from mailstream.workflows.engine import Effects, SendIntent, TimerOp

DEFER_TIMER = "d"
MARKETING = "marketing"

SEND = "send"
DROP = "drop"
DEFER = "defer"
# Why: ok, no_recipient, suppressed, globally_suppressed, no_consent, capped, quiet_hours,
# goal_reached (a held send whose enrollment reached its goal meanwhile).
REASONS = (
    "ok",
    "no_recipient",
    "suppressed",
    "globally_suppressed",
    "no_consent",
    "capped",
    "quiet_hours",
    "goal_reached",
)

ConsentMode = Literal["opt_in", "opt_out"]


@dataclass(frozen=True, slots=True)
class PolicySettings:
    consent: ConsentMode = "opt_in"
    consent_by_region: Mapping[str, ConsentMode] = field(default_factory=dict)  # casefolded
    region_trait: str = "region"
    caps: tuple[Cap, ...] = ()
    when_capped: Literal["defer", "drop"] = "defer"
    quiet: QuietHours | None = None
    default_tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    decisions_kept: int = 20


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # SEND, DROP or DEFER
    reason: str  # one of REASONS
    until: int | None = None  # for DEFER: when to decide again (epoch ms)


OK = Decision(SEND, "ok")


def consent_mode(settings: PolicySettings, user: UserState) -> ConsentMode:
    region = user.traits.get(settings.region_trait)
    if isinstance(region, str):
        return settings.consent_by_region.get(region.casefold(), settings.consent)
    return settings.consent


def has_marketing_consent(settings: PolicySettings, user: UserState) -> bool:
    """Opt-in: the user said yes. Opt-out: the user did not say no."""
    granted = user.consent.get("marketing")
    if consent_mode(settings, user) == "opt_in":
        return granted is True
    return granted is not False


def user_quiet_hours(settings: PolicySettings, user: UserState) -> QuietHours | None:
    """The user's own ``quiet_hours`` trait ("22:00-07:00"), else the configured window."""
    own = user.traits.get("quiet_hours")
    if isinstance(own, str) and "-" in own:
        start, _, end = own.partition("-")
        try:
            return QuietHours(parse_clock(start), parse_clock(end))
        except ValueError:
            pass  # a malformed trait falls back to the default window
    return settings.quiet


def blocking_suppression(
    user: UserState, listed: Suppression | None, category: str
) -> Decision | None:
    # The user's page shows which suppressions they have and why.
    for entry in user.suppressions.values():
        if entry.blocks(category):
            return Decision(DROP, "suppressed")
    if listed is not None and listed.blocks(category):
        return Decision(DROP, "globally_suppressed")
    return None


def decide(
    settings: PolicySettings,
    user: UserState,
    category: str,
    now: int,
    listed: Suppression | None = None,
) -> Decision:
    """Whether a send of ``category`` goes to ``user`` at ``now``, is dropped, or waits.

    ``listed`` is the global suppression list's entry for the user's address, if any.
    Transactional email only stops for suppression; marketing also needs consent and
    respects the caps and quiet hours, which defer it (or, configured so, drop it).
    """
    if recipient(user) is None:
        return Decision(DROP, "no_recipient")
    blocked = blocking_suppression(user, listed, category)
    if blocked is not None:
        return blocked
    if category != MARKETING:
        return OK
    if not has_marketing_consent(settings, user):
        return Decision(DROP, "no_consent")
    tz = zone(user.traits.get("timezone"), settings.default_tz)
    at, reason = now, "ok"
    if settings.caps:
        free = caps_free_at(settings.caps, user.sent, now, tz)
        if free > now:
            if settings.when_capped == "drop":
                return Decision(DROP, "capped")
            at, reason = free, "capped"
    quiet = user_quiet_hours(settings, user)
    if quiet is not None:
        end = quiet_until(quiet, at, tz)
        if end is not None:
            at = end
            reason = "quiet_hours" if reason == "ok" else reason
    return OK if at == now else Decision(DEFER, reason, at)


_INTENT_FIELDS = (
    "workflow",
    "enrollment_id",
    "step",
    "template",
    "category",
    "priority",
    "context",
    "event",
)


def _held(intent: SendIntent, decision: Decision) -> dict[str, Any]:
    held = {name: getattr(intent, name) for name in _INTENT_FIELDS}
    held["until"] = decision.until
    held["reason"] = decision.reason
    return held


def _intent(send_id: str, held: Mapping[str, Any]) -> SendIntent:
    return SendIntent(send_id=send_id, **{name: held[name] for name in _INTENT_FIELDS})


class Policy:
    """Applies ``decide`` to the sends a workflow run produced, in the user's state."""

    def __init__(
        self,
        settings: PolicySettings,
        listed: Callable[[str], Suppression | None] = lambda address: None,
    ) -> None:
        self.settings = settings
        self.listed = listed  # the global suppression list's lookup by address

    def review(self, user: UserState, fx: Effects, now: int) -> None:
        """Decide each send in ``fx``: only those to make now stay in ``fx.sends``."""
        for workflow, enrollment_id in fx.goal_exits:
            self._cancel_held(user, workflow, enrollment_id, now, fx)
        intents, fx.sends = fx.sends, []
        for intent in intents:
            self._apply(user, intent, now, fx)

    def on_deferred(self, user: UserState, send_id: str, due: int, now: int) -> Effects:
        """A held send's timer is due: decide again (the user may have changed meanwhile)."""
        fx = Effects()
        held = user.deferred.get(send_id)
        if held is None or held["until"] != due:
            return fx  # sent, cancelled or moved since: a stale timer
        del user.deferred[send_id]
        fx.changed = True
        self._apply(user, _intent(send_id, held), now, fx)
        return fx

    def _apply(self, user: UserState, intent: SendIntent, now: int, fx: Effects) -> None:
        address = recipient(user)
        listed = self.listed(address) if address is not None else None
        decision = decide(self.settings, user, intent.category, now, listed)
        self._record(user, intent, decision, now, fx)
        if decision.action == SEND:
            fx.sends.append(intent)
            if intent.category == MARKETING and self.settings.caps:
                user.sent = prune_sent(self.settings.caps, [*user.sent, now], now)
        elif decision.action == DEFER:
            assert decision.until is not None
            user.deferred[intent.send_id] = _held(intent, decision)
            fx.timers_add.append(TimerOp(decision.until, DEFER_TIMER, intent.send_id))

    def _cancel_held(
        self, user: UserState, workflow: str, enrollment_id: str, now: int, fx: Effects
    ) -> None:
        for send_id, held in list(user.deferred.items()):
            if held["workflow"] == workflow and held["enrollment_id"] == enrollment_id:
                del user.deferred[send_id]
                fx.timers_del.append(TimerOp(held["until"], DEFER_TIMER, send_id))
                self._record(user, _intent(send_id, held), Decision(DROP, "goal_reached"), now, fx)

    def _record(
        self, user: UserState, intent: SendIntent, decision: Decision, now: int, fx: Effects
    ) -> None:
        user.decisions.append(
            [
                now,
                intent.send_id,
                intent.workflow,
                intent.template,
                intent.category,
                decision.action,
                decision.reason,
                decision.until,
            ]
        )
        del user.decisions[: -self.settings.decisions_kept]
        fx.decisions.append((intent.category, decision.action, decision.reason))
        fx.changed = True
