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
from mailstream.kafka.intake import Intake
from mailstream.kafka.records import RawMessage
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime
from mailstream.state.staged_flush import Outbox, flush
from mailstream.state.store import progress_key
from mailstream.workflows.apply_effects import dead_letter_counted

logger = logging.getLogger(__name__)

# At most this many keys expire per partition and batch: more than a batch adds.
EXPIRE_PER_BATCH = 2000


class ReplayGuard:
    """Judges the claims of the partitions of the claims topic this worker owns."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.config = rt.config
        self.topic = rt.config.topics.feedback_claims
        self.progress = progress_key(self.topic)
        self.replay_guard = rt.tables.replay_guard
        self.intake = Intake(self.replay_guard, {self.topic: self.progress})

    def newest_received(self, partition: int) -> int:
        """The newest ``received`` among the partition's applied claims: the guard's clock,
        kept in the progress record (0: none yet)."""
        note = self.replay_guard.progress_note(partition, self.progress)
        return int(note) if note else 0

    async def apply_batch(self, messages: list[RawMessage]) -> None:
        """Judge a batch of claims; call with the intake's lock held."""
        fresh = await self.intake.fresh(messages, self.topic)
        if not fresh:
            return
        outbox = Outbox()
        newest: dict[int, int] = {}
        for m in fresh:
            if m.partition not in newest:
                newest[m.partition] = self.newest_received(m.partition)
            try:
                claim = Claim.decode(m.value or b"")
            except (ValueError, TypeError) as exc:
                dead_letter_counted(outbox, self.config.topics.dlq, m, "bad_claim", str(exc))
                continue
            assert claim.key is not None  # decode refuses a claim without one
            newest[m.partition] = max(newest[m.partition], claim.received)
            provider = claim.key.partition(":")[0]
            key = entry_key(claim.key)
            raw = outbox.get(self.replay_guard, m.partition, key)
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
                outbox.put(
                    self.replay_guard, m.partition, key, Entry(claim.until, m.offset).encode()
                )
                outbox.put(self.replay_guard, m.partition, expiry_key(claim.until, claim.key), b"")
            for fb in claim.feedback:
                found = destination(fb, self.config.topics.feedback, self.config.topics.suppression)
                if found is None:
                    metrics.FEEDBACK.labels(fb.kind, "no_user").inc()
                    continue
                outbox.send(*found, origin=m.partition)
                if found[0] == self.config.topics.suppression:
                    metrics.FEEDBACK.labels(fb.kind, "suppressed_by_address").inc()
            metrics.WEBHOOK_CLAIMS.labels(provider, "applied").inc()
        for partition, received in newest.items():
            self._expire(outbox, partition, received)
        notes = {partition: str(received).encode() for partition, received in newest.items()}
        outbox.put_progress(self.replay_guard, fresh, self.progress, notes)
        await flush(self.rt.writer, outbox)

    def _expire(self, outbox: Outbox, partition: int, received: int) -> None:
        """Delete the keys of ``partition`` that no claim can replay any more."""
        start, end = expiry_range(received)
        index = outbox.keys_between(self.replay_guard, partition, start, end, EXPIRE_PER_BATCH)
        entries: dict[bytes, Entry | None] = {}
        for index_key in index:
            raw = outbox.get(self.replay_guard, partition, entry_of(index_key))
            entries[entry_of(index_key)] = Entry.decode(raw) if raw is not None else None
        for key in expired(index, received, entries):
            outbox.put(self.replay_guard, partition, key, None)


def register(rt: Runtime) -> None:
    guard = ReplayGuard(rt)
    rt.read_through(guard.topic, "mailstream.replay_guard", guard.intake, guard.apply_batch)
