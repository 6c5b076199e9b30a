"""The replay guard agent: hands on a signed webhook's feedback the first time its replay
key is seen, and drops the replays (mailstream.feedback.replay_guard decides).

Claims are keyed by replay key, so all claims of one key are in one partition, in the
order the broker took them, and only the worker that owns the partition decides: two
workers taking the same signature block at once, or one before a restart and one after,
meet here. The key is recorded in the table, made durable by its changelog, in the same
flush as the feedback it lets through and the partition's progress, so a crash between
them applies the claim again (recognised by its offset: the feedback goes out again and
the user's worker drops the repeat by its event id) and never lets a replay through.
"""

from __future__ import annotations

import logging
from typing import Any

from mailstream.app import app, close_when_stopping, config, settled
from mailstream.core.ingest_batch import RawMessage
from mailstream.feedback.normalised import destination
from mailstream.feedback.replay_guard import (
    Claim,
    Entry,
    Verdict,
    entry_key,
    entry_of,
    expired,
    expiry_key,
    expiry_range,
    judge,
)
from mailstream.kafka.backfill import QUIET_SECONDS, Intake
from mailstream.observability import metrics
from mailstream.state.staged_flush import Outbox, flush
from mailstream.state.store import progress_key
from mailstream.workflows.apply_effects import dead_letter_message
from tables.replay_claims import replay_guard

logger = logging.getLogger(__name__)

TOPIC = config.topics.feedback_claims
PROGRESS = progress_key(TOPIC)
claims_topic = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
intake = Intake(replay_guard, {TOPIC: PROGRESS}, config.bootstrap_servers)
# At most this many keys expire per partition and batch: more than a batch adds.
EXPIRE_PER_BATCH = 2000


def newest_received(partition: int) -> int:
    """The newest ``received`` among the partition's applied claims: the guard's clock,
    kept in the progress record (0: none yet)."""
    note = replay_guard.progress_note(partition, PROGRESS)
    return int(note) if note else 0


async def apply_batch(messages: list[RawMessage]) -> None:
    """Judge a batch of claims; call with the intake's lock held."""
    fresh = await intake.fresh(messages, TOPIC)
    if not fresh:
        return
    outbox = Outbox()
    newest: dict[int, int] = {}
    for m in fresh:
        if m.partition not in newest:
            newest[m.partition] = newest_received(m.partition)
        try:
            claim = Claim.decode(m.value or b"")
        except (ValueError, TypeError) as exc:
            dead_letter_message(outbox, config.topics.dlq, m, "bad_claim", str(exc))
            metrics.DEAD_LETTERS.labels("bad_claim").inc()
            continue
        assert claim.key is not None  # decode refuses a claim without one
        newest[m.partition] = max(newest[m.partition], claim.received)
        provider = claim.key.partition(":")[0]
        key = entry_key(claim.key)
        raw = outbox.get(replay_guard, m.partition, key)
        stored = Entry.decode(raw) if raw is not None else None
        verdict = judge(claim, stored, m.offset)
        if verdict == Verdict.REPLAYED:
            assert stored is not None
            # the key itself stays out of the log: a Mailgun token signs requests
            logger.warning(
                "replay guard: dropped a %s webhook at %s[%d]@%d, a replay of the one at @%d",
                provider,
                m.topic,
                m.partition,
                m.offset,
                stored.offset,
            )
            metrics.WEBHOOK_CLAIMS.labels(provider, "replayed").inc()
            continue
        if verdict == Verdict.FIRST:
            outbox.put(replay_guard, m.partition, key, Entry(claim.until, m.offset).encode())
            outbox.put(replay_guard, m.partition, expiry_key(claim.until, claim.key), b"")
        for fb in claim.feedback:
            found = destination(fb, config.topics.feedback, config.topics.suppression)
            if found is None:
                metrics.FEEDBACK.labels(fb.kind, "no_user").inc()
                continue
            outbox.send(*found)
            if found[0] == config.topics.suppression:
                metrics.FEEDBACK.labels(fb.kind, "suppressed_by_address").inc()
        metrics.WEBHOOK_CLAIMS.labels(provider, "applied").inc()
    for partition, received in newest.items():
        _expire(outbox, partition, received)
    notes = {partition: str(received).encode() for partition, received in newest.items()}
    outbox.put_progress(replay_guard, fresh, PROGRESS, notes)
    await flush(app.producer, outbox)


def _expire(outbox: Outbox, partition: int, received: int) -> None:
    """Delete the keys of ``partition`` that no claim can replay any more."""
    start, end = expiry_range(received)
    index = outbox.keys_between(replay_guard, partition, start, end, EXPIRE_PER_BATCH)
    entries: dict[bytes, Entry | None] = {}
    for index_key in index:
        raw = outbox.get(replay_guard, partition, entry_of(index_key))
        entries[entry_of(index_key)] = Entry.decode(raw) if raw is not None else None
    for key in expired(index, received, entries):
        outbox.put(replay_guard, partition, key, None)


@app.agent(claims_topic, name="mailstream.replay_guard")
async def guard_claims(stream: Any) -> None:
    await intake.consume(stream, apply_batch)


@app.timer(interval=QUIET_SECONDS)
async def sweep_skipped_claims() -> None:
    """Claims the consumer skipped at the end of a quiet partition."""
    if settled():
        await intake.sweep(apply_batch)


close_when_stopping(intake)
