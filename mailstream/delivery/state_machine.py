"""The delivery of one send: its record in the deliveries table and how it moves.

queued -> attempting -> sent
                     -> queued again (retryable failure, after a backoff)
                     -> failed (permanent failure, or retries used up)
queued, its user or address suppressed since it was written -> dropped (never sent)
attempting, found after a crash -> queued again (transactional: never lost)
                                -> unknown (marketing: never sent twice)
any, when the dispatcher keeps failing on it -> dead_lettered (never sent again)

Pure: the agent passes the time, the provider's answer and the jitter in.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from mailstream.delivery.pacing import retry_delay
from mailstream.providers.base import Accepted, SendFailure
from mailstream.suppression.entries import Suppression

QUEUED = "queued"
ATTEMPTING = "attempting"
SENT = "sent"
FAILED = "failed"
UNKNOWN = "unknown"
DROPPED = "dropped"  # marketing beyond its tenant's sends per day, with over_daily_quota: drop
DEAD_LETTERED = "dead_lettered"  # the dispatcher failed on it repeatedly (dispatch_guard)
FINAL = (SENT, FAILED, UNKNOWN, DROPPED, DEAD_LETTERED)

# Queue order: every transactional send before any marketing one, then by priority.
_RANK = {
    ("transactional", "high"): 0,
    ("transactional", "normal"): 1,
    ("transactional", "low"): 2,
    ("marketing", "high"): 3,
    ("marketing", "normal"): 4,
    ("marketing", "low"): 5,
}
_QUEUE_HEAD = struct.Struct(">BQ")  # rank, then ready time: byte order is queue order
_SEP = b"\x1f"  # tenant ids cannot hold it


def delivery_key(tenant: str, send_id: str) -> bytes:
    """The deliveries table key of a send: tenant-scoped, like every per-user key."""
    return tenant.encode() + _SEP + send_id.encode()


def rank(category: str, priority: str) -> int:
    found = _RANK.get((category, priority))
    if found is not None:
        return found
    return _RANK[("transactional" if category == "transactional" else "marketing", "normal")]


@dataclass(frozen=True, slots=True)
class QueueKey:
    """Where a send waits: its tenant's delivery lane (mailstream.core.tenants.Tenancy.lane)
    first, so each lane is one key range, then rank, ready time, tenant and send id."""

    rank: int
    ready: int  # epoch ms: not before
    send_id: str
    tenant: str = "default"
    lane: str = "default"

    def encode(self) -> bytes:
        return (
            self.lane.encode()
            + _SEP
            + _QUEUE_HEAD.pack(self.rank, self.ready)
            + delivery_key(self.tenant, self.send_id)
        )

    @classmethod
    def decode(cls, raw: bytes) -> QueueKey:
        cut = raw.index(_SEP)
        r, ready = _QUEUE_HEAD.unpack_from(raw, cut + 1)
        tenant, _, send_id = raw[cut + 1 + _QUEUE_HEAD.size :].partition(_SEP)
        return cls(r, ready, send_id.decode(), tenant.decode(), raw[:cut].decode())

    @property
    def record_key(self) -> bytes:
        return delivery_key(self.tenant, self.send_id)


def queue_ready(raw: bytes) -> int:
    """When the send (or call) of a queue key may go (mailstream.state.rocksdb_store.DueTime)."""
    cut = raw.find(_SEP)
    if cut < 0 or len(raw) < cut + 1 + _QUEUE_HEAD.size:
        raise ValueError("not a queue key")
    return int(_QUEUE_HEAD.unpack_from(raw, cut + 1)[1])


def rank_bounds(r: int, now: int, lane: str = "default") -> tuple[bytes, bytes]:
    """Keys of ``lane`` and rank ``r`` ready at ``now`` sort in [start, end)."""
    head = lane.encode() + _SEP
    return head + _QUEUE_HEAD.pack(r, 0), head + _QUEUE_HEAD.pack(r, now + 1)


@dataclass(slots=True)
class Delivery:
    """A send's record in the deliveries table."""

    state: str
    category: str
    user_id: str
    tenant_id: str
    attempts: int = 0
    updated: int = 0
    provider_id: str | None = None
    # [at, code, message] for every failed attempt
    history: list[list[Any]] = field(default_factory=list)
    queue_key: bytes | None = None  # where it waits, while queued
    # what the provider or the recipient reported later: [at, kind], latest first
    feedback: list[list[Any]] = field(default_factory=list)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "s": self.state,
                "c": self.category,
                "u": self.user_id,
                "t": self.tenant_id,
                "a": self.attempts,
                "at": self.updated,
                "p": self.provider_id,
                "h": self.history,
                "q": self.queue_key.hex() if self.queue_key is not None else None,
                "f": self.feedback,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Delivery:
        d = orjson.loads(raw)
        return cls(
            state=d["s"],
            category=d["c"],
            user_id=d["u"],
            tenant_id=d["t"],
            attempts=d["a"],
            updated=d["at"],
            provider_id=d["p"],
            history=d["h"],
            queue_key=bytes.fromhex(d["q"]) if d.get("q") else None,
            feedback=d.get("f", []),
        )

    def copy(self) -> Delivery:
        """A copy to change without touching this one (nested lists included)."""
        return Delivery.decode(self.encode())

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "category": self.category,
            "attempts": self.attempts,
            "updated": self.updated,
            "provider_id": self.provider_id,
            "history": [dict(zip(("at", "code", "message"), h, strict=True)) for h in self.history],
            "feedback": [dict(zip(("at", "kind"), f, strict=True)) for f in self.feedback],
        }


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_s: float = 2.0
    max_delay_s: float = 600.0


def accept(
    existing: Delivery | None, command: dict[str, Any], now: int, lane: str | None = None
) -> Delivery | None:
    """A send command arrives: a new queued delivery in its tenant's lane (default: the
    tenant's own), or None for a send id seen before (a replayed or re-sent command)."""
    if existing is not None:
        return None
    tenant = command["tenant_id"]
    key = QueueKey(
        rank(command["category"], command.get("priority", "normal")),
        now,
        command["send_id"],
        tenant,
        lane or tenant,
    )
    return Delivery(
        state=QUEUED,
        category=command["category"],
        user_id=command["user_id"],
        tenant_id=command["tenant_id"],
        updated=now,
        queue_key=key.encode(),
    )


def attempt(delivery: Delivery, now: int) -> None:
    """Recorded, and acknowledged, before the provider is called."""
    delivery.state = ATTEMPTING
    delivery.attempts += 1
    delivery.updated = now


def succeeded(delivery: Delivery, accepted: Accepted, now: int) -> None:
    delivery.state = SENT
    delivery.provider_id = accepted.provider_message_id
    delivery.updated = now
    delivery.queue_key = None


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    retry_at: int | None  # epoch ms of the next attempt, or None: no more attempts
    suppress: bool  # the address is invalid: suppress the user as a hard bounce
    reason: str  # "retry", "permanent" or "exhausted"


def failed(
    delivery: Delivery,
    failure: SendFailure,
    policy: RetryPolicy,
    now: int,
    jitter: float,
) -> FailureOutcome:
    """A failed attempt: queue it again after a backoff, or give up."""
    delivery.history.append([now, failure.code, failure.message])
    delivery.updated = now
    if not failure.retryable:
        delivery.state = FAILED
        delivery.queue_key = None
        return FailureOutcome(None, failure.invalid_recipient, "permanent")
    if delivery.attempts >= policy.max_attempts:
        delivery.state = FAILED
        delivery.queue_key = None
        return FailureOutcome(None, False, "exhausted")
    delay = retry_delay(
        delivery.attempts, policy.base_s, policy.max_delay_s, jitter, failure.retry_after
    )
    retry_at = now + int(delay * 1000)
    delivery.state = QUEUED
    assert delivery.queue_key is not None, "a delivery keeps its queue key until it is final"
    old = QueueKey.decode(delivery.queue_key)
    delivery.queue_key = dataclasses.replace(old, ready=retry_at).encode()
    return FailureOutcome(retry_at, False, "retry")


def postponed(delivery: Delivery, until: int, now: int) -> None:
    """Held back (its tenant's daily quota) until ``until``: queued again for then."""
    assert delivery.queue_key is not None, "only a queued delivery is postponed"
    old = QueueKey.decode(delivery.queue_key)
    delivery.queue_key = dataclasses.replace(old, ready=until).encode()
    delivery.updated = now
    delivery.history.append([now, "quota_deferred", "over the tenant's sends per day"])


def dropped(delivery: Delivery, now: int) -> None:
    """Given up (its tenant's daily quota, over_daily_quota: drop): never sent."""
    delivery.state = DROPPED
    delivery.queue_key = None
    delivery.updated = now
    delivery.history.append([now, "quota_dropped", "over the tenant's sends per day"])


def suppressed_since(
    category: str, own: Iterable[Suppression], listed: Suppression | None
) -> str | None:
    """Why a queued send must not go after all, or None: the policy let it through when
    its command was written, but the user (``own``: the user record's suppressions) or
    the address (``listed``: its global suppression list entry) has been suppressed since
    for mail of this ``category``."""
    for entry in own:
        if entry.blocks(category):
            return f"the user is suppressed since it was written ({entry.reason}: {entry.source})"
    if listed is not None and listed.blocks(category):
        return (
            "the address is on the global suppression list since it was written"
            f" ({listed.reason}: {listed.source})"
        )
    return None


def withheld(delivery: Delivery, reason: str, now: int) -> None:
    """Not sent after all: ``reason`` (suppressed_since) says why."""
    delivery.state = DROPPED
    delivery.queue_key = None
    delivery.updated = now
    delivery.history.append([now, "suppressed", reason])


def orphaned(delivery: Delivery, now: int, resend: bool | None = None) -> bool:
    """An ``attempting`` delivery nobody is attempting: the worker died mid-call, and the
    provider may or may not have taken it. Transactional: queue it again (never lost;
    the same Message-ID lets a receiver spot the duplicate). Marketing: give it up as
    ``unknown`` (never sent twice). ``resend`` overrides the category's rule. Returns
    whether it is queued again."""
    delivery.updated = now
    if resend is None:
        resend = delivery.category == "transactional"
    if resend:
        delivery.state = QUEUED
        delivery.history.append([now, "unknown_outcome", "worker stopped during the attempt"])
        return True
    delivery.state = UNKNOWN
    delivery.queue_key = None
    return False


def dead_lettered(delivery: Delivery, now: int, reason: str) -> None:
    """Given up because handling it kept failing: off the queue, on the dead-letter
    topic with ``reason``, and never attempted again (a replayed command is a duplicate)."""
    delivery.state = DEAD_LETTERED
    delivery.queue_key = None
    delivery.updated = now
    delivery.history.append([now, "dispatcher_error", reason])


FEEDBACK_KEPT = 10


def note_feedback(delivery: Delivery, at: int, kind: str) -> bool:
    """Record what a webhook or the recipient said about this send (bounced, delivered,
    opened, ...); the same report twice is noted once."""
    entry = [at, kind]
    if entry in delivery.feedback:
        return False
    delivery.feedback.insert(0, entry)
    delivery.feedback.sort(key=lambda f: f[0], reverse=True)
    del delivery.feedback[FEEDBACK_KEPT:]
    return True
