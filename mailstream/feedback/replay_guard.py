"""The replay guard's decisions: feedback from a signed webhook is applied only the first
time its replay key is seen while the signature could still pass as fresh.

Pure: no I/O, no clock. The web layer turns each verified request into Claims and writes
them to the claims topic keyed by replay key, so every claim on one key lands in one
partition, in the order the broker took them; the guard agent (agents/guard_replays.py)
owns that partition and keeps, in a durable table, the keys it let through. The keys:

- ``mailgun:<token>``: Mailgun signs only timestamp + token, so one captured signature
  block could carry any body. The token is the key, whatever the body says.
- ``sendgrid:<sg_event_id>``, or ``sendgrid:sha256:<digest>`` of the event's canonical
  JSON when it has no id: SendGrid signs the whole body, so a replay repeats the same
  events, and each event is applied once.

A key is remembered until ``until``: one second past the last moment its signed
timestamp is fresh (timestamp + max_age). Every claim records when the web received it,
by the receiving worker's clock, which is the clock that judged the timestamp fresh;
so any replay the web let through was received before ``until`` and is caught,
whichever worker took it and however long it waited in the topic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from mailstream.feedback.normalised import Feedback

__all__ = [
    "ENTRY_PREFIX",
    "EXPIRY_MARGIN_MS",
    "EXPIRY_PREFIX",
    "Claim",
    "Entry",
    "Verdict",
    "due_of",
    "entry_key",
    "entry_of",
    "event_digest",
    "expired",
    "expiry_key",
    "expiry_range",
    "feedback_of",
    "judge",
    "mailgun_key",
    "sendgrid_key",
    "unguarded",
]

# The table holds, per partition, an entry per key and an expiry index ordered by
# ``until``; both prefixes sort after the progress record (a NUL byte first).
ENTRY_PREFIX = b"key:"
EXPIRY_PREFIX = b"until:"
_DIGITS = 15  # epoch ms, zero-padded so the index sorts by time

# Claims reach a partition roughly in the order they were received; how far out of order
# (the workers' clocks apart, plus a produce waiting on the broker) expiry allows for: an
# entry is deleted only once a claim received this long after its ``until`` is applied.
EXPIRY_MARGIN_MS = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Claim:
    """What one verified request (or one event of it) asks to apply. ``key`` None: no
    replay guard (Postmark's webhooks carry no signature to replay), applied at once."""

    feedback: tuple[Feedback, ...]
    key: str | None = None
    until: int = 0  # epoch ms: the key is remembered until then
    received: int = 0  # epoch ms the web received it, by that worker's clock

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "key": self.key,
                "until": self.until,
                "received": self.received,
                "feedback": [orjson.loads(fb.encode()) for fb in self.feedback],
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Claim:
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("a claim must be a JSON object")
        key, until, received = doc.get("key"), doc.get("until"), doc.get("received")
        if not isinstance(key, str) or not key:
            raise ValueError("a claim needs a non-empty 'key'")
        if not (_whole(until) and _whole(received)):
            raise ValueError("a claim needs 'until' and 'received' as epoch ms")
        items = doc.get("feedback")
        if not isinstance(items, list):
            raise ValueError("a claim's 'feedback' must be a list")
        feedback = tuple(Feedback.from_json(item) for item in items)
        return cls(feedback, key, until, received)


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def mailgun_key(token: str) -> str:
    return f"mailgun:{token}"


def event_digest(event: Mapping[str, Any]) -> str:
    """The SHA-256 of an event's canonical JSON (keys sorted), in hex."""
    return hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()


def sendgrid_key(event_id: str) -> str:
    """An event's key: its sg_event_id, or (parse_events' stand-in) sha256:<digest>."""
    return f"sendgrid:{event_id}"


@dataclass(frozen=True, slots=True)
class Entry:
    """A key let through: remembered until ``until``, by the claim at ``offset``."""

    until: int
    offset: int

    def encode(self) -> bytes:
        return f"{self.until} {self.offset}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        until, _, offset = raw.partition(b" ")
        return cls(int(until), int(offset))


def entry_key(key: str) -> bytes:
    return ENTRY_PREFIX + key.encode()


def expiry_key(until: int, key: str) -> bytes:
    return EXPIRY_PREFIX + str(until).zfill(_DIGITS).encode() + b" " + key.encode()


def due_of(index: bytes) -> int:
    """When an expiry index key is due (epoch ms); ValueError for any other key."""
    if not index.startswith(EXPIRY_PREFIX):
        raise ValueError("not an expiry key")
    return int(index[len(EXPIRY_PREFIX) : len(EXPIRY_PREFIX) + _DIGITS])


class Verdict:
    FIRST = "first"  # never seen, or seen too long ago: apply it and remember the key
    AGAIN = "again"  # this very claim, applied before a crash: apply it again
    REPLAYED = "replayed"  # another claim of the key was let through: drop it


def judge(claim: Claim, stored: Entry | None, offset: int) -> str:
    """What to do with the claim at ``offset`` given the key's stored entry."""
    if stored is None or claim.received >= stored.until:
        return Verdict.FIRST
    if stored.offset == offset:
        return Verdict.AGAIN
    return Verdict.REPLAYED


def entry_of(index_key: bytes) -> bytes:
    """The entry key an expiry index key stands for."""
    return ENTRY_PREFIX + index_key[len(EXPIRY_PREFIX) + _DIGITS + 1 :]


def expiry_range(newest_received: int) -> tuple[bytes, bytes]:
    """The expiry index keys that may be due, given the newest ``received`` among the
    partition's applied claims: [start, end)."""
    bound = max(newest_received - EXPIRY_MARGIN_MS, 0)
    return EXPIRY_PREFIX, EXPIRY_PREFIX + str(bound).zfill(_DIGITS).encode()


def expired(
    index: Iterable[bytes], newest_received: int, entries: Mapping[bytes, Entry | None]
) -> list[bytes]:
    """The records to delete for the expiry index keys ``index`` (in order), given the
    newest ``received`` among the partition's applied claims and the entries the index
    keys stand for (``entries[entry_of(index_key)]``): each due index key, and its entry
    unless a later claim renewed it (another index key then stands for it).

    Claims reach a partition roughly in the order they were received, so the newest one
    applied is the guard's clock: a partition that waits (a worker down, a backlog)
    forgets nothing meanwhile, and a claim received before an entry's ``until`` that
    arrives up to EXPIRY_MARGIN_MS later than newer ones still finds it."""
    bound = max(newest_received - EXPIRY_MARGIN_MS, 0)
    deletions: list[bytes] = []
    for index_key in index:
        until = due_of(index_key)
        if until >= bound:
            break
        deletions.append(index_key)
        key = entry_of(index_key)
        entry = entries.get(key)
        if entry is not None and entry.until == until:
            deletions.append(key)
    return deletions


def feedback_of(claims: Iterable[Claim]) -> list[Feedback]:
    """Every claim's feedback, in order."""
    return [fb for claim in claims for fb in claim.feedback]


def unguarded(feedback: Iterable[Feedback]) -> list[Claim]:
    """Feedback applied without the replay guard, as one claim."""
    found = tuple(feedback)
    return [Claim(found)] if found else []
