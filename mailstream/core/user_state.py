"""A user's state: traits, consent, activity and event counts, and how events change it."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from mailstream.core.dedup import SeenIds
from mailstream.core.events import CONSENT_FLAGS, Event, Invalid, Limits, normalise_email
from mailstream.suppression import lifecycle
from mailstream.suppression.entries import Suppression

_HEADER = struct.Struct("<BI")
# How a stored send decision (a list, to keep records small) reads as fields.
DECISION_FIELDS = (
    "at",
    "send_id",
    "workflow",
    "template",
    "category",
    "decision",
    "reason",
    "until",
)
_FORMAT_VERSION = 1


def user_key(tenant_id: str, user_id: str) -> bytes:
    """The table key of a user. Tenant ids cannot hold the separator, so it splits one way."""
    return f"{tenant_id}\x1f{user_id}".encode()


def split_key(key: bytes) -> tuple[str, str]:
    tenant, _, user = key.decode().partition("\x1f")
    return tenant, user


@dataclass(slots=True)
class UserState:
    tenant_id: str
    user_id: str
    traits: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)
    first_seen: int | None = None
    last_activity: int | None = None
    events: dict[str, int] = field(default_factory=dict)
    seen: SeenIds = field(default_factory=SeenIds)
    # workflow name -> enrollment (see mailstream.workflows.engine.Enrollment for the fields)
    enrollments: dict[str, dict[str, Any]] = field(default_factory=dict)
    # workflow name -> when the user last entered it (ms), for entry rules
    entries: dict[str, int] = field(default_factory=dict)
    # inactivity workflow name -> due time (ms) of its pending check
    inactive_due: dict[str, int] = field(default_factory=dict)
    # event type -> sampling window (see mailstream.core.windows.sample)
    sampling: dict[str, list[Any]] = field(default_factory=dict)
    # event type -> times (ms) of the events the throttle let through, oldest first
    throttle: dict[str, list[int]] = field(default_factory=dict)
    # suppression reason -> entry (bounces, complaints, unsubscribes)
    suppressions: dict[str, Suppression] = field(default_factory=dict)
    # the latest suppressions and lifts, oldest first, laid out as
    # mailstream.suppression.lifecycle.LOG_FIELDS
    suppression_log: list[list[Any]] = field(default_factory=list)
    # times (ms) of recent marketing sends, for the frequency caps
    sent: list[int] = field(default_factory=list)
    # times (ms) of recent soft bounces; enough of them make a hard bounce
    soft_bounces: list[int] = field(default_factory=list)
    # send id -> a send held back by the policy (see mailstream.workflows.send_policy)
    deferred: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the latest send decisions, oldest first, laid out as DECISION_FIELDS
    decisions: list[list[Any]] = field(default_factory=list)
    # segment name -> when the user joined it (ms); see mailstream.workflows.segments
    segments: dict[str, int] = field(default_factory=dict)
    # the last values seen of the fields change triggers watch
    # (mailstream.workflows.field_changes.Memory)
    changes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The user's state as the API shows it (the dedup window is internal)."""
        return {
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "traits": self.traits,
            "consent": self.consent,
            "first_seen": self.first_seen,
            "last_activity": self.last_activity,
            "events": self.events,
            "enrollments": self.enrollments,
            "entries": self.entries,
            "suppressions": {r: s.to_json() for r, s in self.suppressions.items()},
            "suppression_history": lifecycle.history(self),
            "deferred_sends": [
                {"send_id": sid, **{k: d[k] for k in ("workflow", "template", "until", "reason")}}
                for sid, d in self.deferred.items()
            ],
            "send_decisions": [dict(zip(DECISION_FIELDS, d, strict=True)) for d in self.decisions],
            "segments": self.segments,
            "last_seen_fields": self.changes,
        }

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "t": self.tenant_id,
            "u": self.user_id,
            "tr": self.traits,
            "c": self.consent,
            "fs": self.first_seen,
            "la": self.last_activity,
            "ev": self.events,
            "en": self.enrollments,
            "et": self.entries,
            "id": self.inactive_due,
        }
        # Policy state is absent for most users: leave it out rather than store empties.
        if self.sampling:
            doc["sm"] = self.sampling
        if self.throttle:
            doc["th"] = self.throttle
        if self.suppressions:
            doc["su"] = {r: [s.source, s.at] for r, s in self.suppressions.items()}
        if self.suppression_log:
            doc["sl"] = self.suppression_log
        if self.sent:
            doc["se"] = self.sent
        if self.soft_bounces:
            doc["sb"] = self.soft_bounces
        if self.deferred:
            doc["df"] = self.deferred
        if self.decisions:
            doc["dc"] = self.decisions
        if self.segments:
            doc["sg"] = self.segments
        if self.changes:
            doc["cv"] = self.changes
        raw = orjson.dumps(doc)
        return _HEADER.pack(_FORMAT_VERSION, len(raw)) + raw + self.seen.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> UserState:
        version, size = _HEADER.unpack_from(data)
        if version != _FORMAT_VERSION:
            raise ValueError(f"unknown user record format {version}")
        view = memoryview(data)
        start = _HEADER.size
        doc = orjson.loads(view[start : start + size])
        return cls(
            tenant_id=doc["t"],
            user_id=doc["u"],
            traits=doc["tr"],
            consent=doc["c"],
            first_seen=doc["fs"],
            last_activity=doc["la"],
            events=doc["ev"],
            enrollments=doc.get("en", {}),
            entries=doc.get("et", {}),
            inactive_due=doc.get("id", {}),
            sampling=doc.get("sm", {}),
            throttle=doc.get("th", {}),
            suppressions={
                r: Suppression(r, source, at) for r, (source, at) in doc.get("su", {}).items()
            },
            suppression_log=doc.get("sl", []),
            sent=doc.get("se", []),
            soft_bounces=doc.get("sb", []),
            deferred=doc.get("df", {}),
            decisions=doc.get("dc", []),
            segments=doc.get("sg", {}),
            changes=doc.get("cv", {}),
            seen=SeenIds.from_bytes(view[start + size :]),
        )


def merge_traits(state: UserState, traits: dict[str, Any]) -> None:
    """Apply an identify's traits: a value sets, null removes, consent merges flag by flag.

    ``consent: null`` removes every consent flag; ``consent: {marketing: null}`` just one.
    """
    for name, value in traits.items():
        if name == "consent":
            if value is None:
                state.consent.clear()
            for flag, granted in (value or {}).items():
                if granted is None:
                    state.consent.pop(flag, None)
                else:
                    state.consent[flag] = granted
        elif value is None:
            state.traits.pop(name, None)
        elif name == "email":
            state.traits["email"] = normalise_email(value)
        else:
            state.traits[name] = value


def record_size(state: UserState) -> int:
    """The bytes of a user's record, less its dedup memory (bounded on its own by
    ``ingest.dedup_max_ids_per_user``)."""
    return len(state.encode()) - len(state.seen.to_bytes())


def identify_problem(state: UserState, traits: dict[str, Any], limits: Limits) -> Invalid | None:
    """Why applying an identify's ``traits`` would make the user's record too large (too
    many traits, or too many bytes: every later event rewrites the whole record); None
    when it fits. An identify that adds nothing (a consent withdrawn, a trait changed
    for a shorter one, one removed) always fits, so a record grown large by other means
    never refuses it. ``state`` is left as it is either way."""
    trial = dataclasses.replace(state, traits=dict(state.traits), consent=dict(state.consent))
    merge_traits(trial, traits)
    count = len(trial.traits)
    if count > limits.max_traits and count > len(state.traits):
        return Invalid(
            "user_too_large",
            f"payload would give user {state.user_id[:80]!r} {count} traits,"
            f" over the limit of {limits.max_traits} (ingest.limits.max_traits)",
        )
    size = record_size(trial)
    if size > limits.max_user_record_bytes and _adds_to(trial, state):
        return Invalid(
            "user_too_large",
            f"payload would make the record of user {state.user_id[:80]!r} {size} bytes,"
            f" over the limit of {limits.max_user_record_bytes}"
            " (ingest.limits.max_user_record_bytes)",
        )
    return None


def _adds_to(trial: UserState, state: UserState) -> bool:
    """Whether ``trial``'s traits or consent flags take more room than ``state``'s."""
    return len(trial.consent) > len(state.consent) or len(orjson.dumps(trial.traits)) > len(
        orjson.dumps(state.traits)
    )


def apply_event(state: UserState, event: Event) -> None:
    """Fold one new (already deduplicated) event into the user's state."""
    if state.first_seen is None or event.timestamp < state.first_seen:
        state.first_seen = event.timestamp
    if event.event_type == "identify":
        merge_traits(state, event.payload)
        if lifecycle.opted_in_by_user(event.payload, event.metadata):
            # the user's own opt-in undoes their unsubscribe (never a bounce or complaint)
            lifecycle.lift(state, ["unsubscribe"], "user:identify", event.timestamp, by_user=True)
        return
    if state.last_activity is None or event.timestamp > state.last_activity:
        state.last_activity = event.timestamp
    state.events[event.event_type] = state.events.get(event.event_type, 0) + 1


__all__ = [
    "CONSENT_FLAGS",
    "UserState",
    "apply_event",
    "identify_problem",
    "merge_traits",
    "split_key",
    "user_key",
]
