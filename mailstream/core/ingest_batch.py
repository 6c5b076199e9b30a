"""The ingest decision for a batch of raw messages: validate, deduplicate, fold into state."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from mailstream.core.dedup import id_hash
from mailstream.core.events import DEFAULT_LIMITS, IDENTIFY, Event, Invalid, Limits, decode_event
from mailstream.core.tenants import OTHER_LABEL, EventRates, Tenancy
from mailstream.core.user_state import UserState, apply_event, identify_problem, user_key
from mailstream.core.windows import SamplingRule, ThrottleRule, sample, throttle
from mailstream.kafka.partitioning import partition_for
from mailstream.kafka.records import RawMessage

PROCESSED = "processed"
DEDUPLICATED = "deduplicated"
SAMPLED_OUT = "sampled_out"
THROTTLED = "throttled"
DEAD_LETTERED = "dead_lettered"
# Arrived in a partition other than its key's: copied there, decided there. Not final:
# the copy ends in one of the outcomes above.
REROUTED = "rerouted"
OUTCOMES = (PROCESSED, DEDUPLICATED, SAMPLED_OUT, THROTTLED, DEAD_LETTERED, REROUTED)
# The event type and tenant label of a rerouted event: it is moved unread.
NOT_READ = "(not read)"


@dataclass(slots=True, frozen=True)
class Reroute:
    """A message to copy, as it came, to ``partition`` of its topic: its key's."""

    message: RawMessage
    partition: int


@dataclass(slots=True, frozen=True)
class DeadLetter:
    message: RawMessage
    code: str
    reason: str


@dataclass(slots=True, frozen=True)
class IngestSettings:
    max_event_bytes: int
    default_tenant: str
    dedup_window_s: float
    dedup_max_ids: int
    sampling: Mapping[str, SamplingRule] = field(default_factory=dict)
    throttling: Mapping[str, ThrottleRule] = field(default_factory=dict)
    # None: every tenant is allowed, with no quota
    tenancy: Tenancy | None = None
    # the events topic's partitions, to re-route a message that is not in its key's
    # partition (partition_for); None: take every message where it is
    partitions: int | None = None
    limits: Limits = DEFAULT_LIMITS


@dataclass(slots=True)
class BatchResult:
    """What a batch decided: the user states to write, the dead letters, and the outcomes."""

    changed: dict[tuple[int, bytes], UserState] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # messages to copy to their key's partition, in order
    reroutes: list[Reroute] = field(default_factory=list)
    # (outcome, event_type or reason code, tenant label) -> count
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    # what ``react`` returned for each processed event, with the user's slot, in order
    reactions: list[tuple[tuple[int, bytes], Any]] = field(default_factory=list)
    # partition -> outcome -> count: what each partition's ledger record adds
    by_partition: dict[int, dict[str, int]] = field(default_factory=dict)

    # tenant-scoped quotas that held events back: tenant label -> count
    tenant_throttled: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str, label: str, partition: int, tenant: str = OTHER_LABEL) -> None:
        k = (outcome, label, tenant)
        self.counts[k] = self.counts.get(k, 0) + 1
        ledger = self.by_partition.setdefault(partition, {})
        ledger[outcome] = ledger.get(outcome, 0) + 1

    @property
    def outcomes(self) -> dict[tuple[str, str], int]:
        """(outcome, event_type or reason code) -> count, over all tenants."""
        out: dict[tuple[str, str], int] = {}
        for (outcome, label, _tenant), n in self.counts.items():
            out[(outcome, label)] = out.get((outcome, label), 0) + n
        return out


def _key_problem(key: bytes | None, user_id: str) -> Invalid:
    # A user's events must share one partition, or their state would be split.
    hint = "key every event by its user_id so a user's events share a partition"
    if key is None:
        return Invalid("missing_key", f"message has no key: {hint}")
    return Invalid(
        "key_mismatch", f"message key {key[:80]!r} is not the user_id {user_id[:80]!r}: {hint}"
    )


def admit(state: UserState, event: Event, now_ms: int, settings: IngestSettings) -> str | None:
    """Run the event's sampling and throttling rules: None when it is to be processed
    (its windows updated), else the outcome that drops it.

    Windows use the event's own time, so a replay decides as the first run did; a time
    in the future counts as now, so a wrong client clock cannot hold a window open.
    """
    kind = event.event_type
    at = min(event.timestamp, now_ms)
    rule = settings.sampling.get(kind)
    kept = None
    if rule is not None:
        kept = sample(rule, state.sampling.get(kind), event.event_id, at, event.payload)
        if kept is None:
            return SAMPLED_OUT
    limit = settings.throttling.get(kind)
    if limit is not None:
        window = throttle(limit, state.throttle.get(kind, ()), at)
        if window is None:
            return THROTTLED
        state.throttle[kind] = window
    if kept is not None:
        state.sampling[kind] = kept
    return None


# Loads the stored state of a user key in a partition, or None for a new user.
StateLoader = Callable[[int, bytes], UserState | None]


def ingest_batch(
    messages: Sequence[RawMessage],
    load: StateLoader,
    now_ms: int,
    settings: IngestSettings,
    react: Callable[[UserState, Event], Any] | None = None,
    rates: EventRates | None = None,
    into: BatchResult | None = None,
) -> BatchResult:
    """Decide every message of a batch in order; each ends in exactly one outcome.

    A keyed message in a partition other than its key's (``settings.partitions``) is
    ``rerouted``: read no further, to be copied to that partition and decided there.

    A user touched several times in the batch is loaded once and written once.
    ``react`` (the workflow engine) sees each processed event right after it is folded
    into the user's state, so it sees the state as of that event. ``rates`` holds the
    tenants' events-per-second quotas; an event beyond its tenant's is throttled before
    its user is even read. With ``into``, the messages continue a batch decided so far
    into that result (``load`` must then hand back the states that batch already read).
    """
    tenancy = settings.tenancy
    result = into if into is not None else BatchResult()  # a batch decided in parts
    changed = result.changed
    loaded: dict[tuple[int, bytes], UserState] = {}  # read once, whether or not it changes
    now_s = now_ms // 1000
    for msg in messages:
        # First, before anything is read: a user's state lives in the partition of the
        # key, whichever partitioner the producer used.
        if settings.partitions is not None and msg.key is not None:
            home = partition_for(msg.key, settings.partitions)
            if home != msg.partition:
                result.reroutes.append(Reroute(msg, home))
                result.count(REROUTED, NOT_READ, msg.partition, NOT_READ)
                continue
        decoded = decode_event(
            msg.value,
            max_bytes=settings.max_event_bytes,
            default_tenant=settings.default_tenant,
            limits=settings.limits,
        )
        if isinstance(decoded, Invalid):
            result.dead_letters.append(DeadLetter(msg, decoded.code, decoded.reason))
            result.count(DEAD_LETTERED, decoded.code, msg.partition)
            continue
        tenant = decoded.tenant_id
        if tenancy is not None and not tenancy.known(tenant):
            reason = (
                f"tenant_id {tenant!r} is not configured under tenants: (set"
                " ingest.unknown_tenants: allow to run such events with the default settings)"
            )
            result.dead_letters.append(DeadLetter(msg, "unknown_tenant", reason))
            result.count(DEAD_LETTERED, "unknown_tenant", msg.partition)
            continue
        label = tenancy.label(tenant) if tenancy is not None else tenant
        if msg.key != decoded.user_id.encode():
            problem = _key_problem(msg.key, decoded.user_id)
            result.dead_letters.append(DeadLetter(msg, problem.code, problem.reason))
            result.count(DEAD_LETTERED, problem.code, msg.partition, label)
            continue
        if rates is not None and not rates.admit(tenant, now_ms / 1000):
            # Over the tenant's events per second: dropped before anything is read.
            result.count(THROTTLED, decoded.event_type, msg.partition, label)
            result.tenant_throttled[label] = result.tenant_throttled.get(label, 0) + 1
            continue
        slot = (msg.partition, user_key(decoded.tenant_id, decoded.user_id))
        state = changed.get(slot) or loaded.get(slot)
        if state is None:
            state = load(*slot) or UserState(decoded.tenant_id, decoded.user_id)
            loaded[slot] = state
        digest = id_hash(decoded.event_id)  # checked now, remembered if the event is kept
        if state.seen.has(digest):
            result.count(DEDUPLICATED, decoded.event_type, msg.partition, label)
            continue
        if decoded.event_type == IDENTIFY:
            too_large = identify_problem(state, decoded.payload, settings.limits)
            if too_large is not None:  # the state stays as it was
                result.dead_letters.append(DeadLetter(msg, too_large.code, too_large.reason))
                result.count(DEAD_LETTERED, too_large.code, msg.partition, label)
                continue
        dropped = admit(state, decoded, now_ms, settings)
        if dropped is not None:
            # Nothing is written for it: not the state, not even the dedup window.
            result.count(dropped, decoded.event_type, msg.partition, label)
            continue
        state.seen.remember(digest, now_s)
        apply_event(state, decoded)
        changed[slot] = state
        result.events.append(decoded)
        if react is not None:
            result.reactions.append((slot, react(state, decoded)))
        result.count(PROCESSED, decoded.event_type, msg.partition, label)
    for state in changed.values():
        state.seen.prune(now_s, settings.dedup_window_s, settings.dedup_max_ids)
    return result


def add_to_ledger(raw: bytes | None, counts: dict[str, int]) -> bytes:
    """A partition's ledger record (outcome -> events, since the partition's first event)
    with ``counts`` added. It is written in the partition's progress record, so each
    event is in it exactly once, whatever crashes and replays happen."""
    ledger: dict[str, int] = orjson.loads(raw) if raw else {}
    for outcome, n in counts.items():
        ledger[outcome] = ledger.get(outcome, 0) + n
    return orjson.dumps(ledger)
