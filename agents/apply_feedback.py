"""The feedback agent: bounces, complaints, unsubscribes and engagement, from provider
webhooks and one-click links, applied to the user and to the send's delivery record."""

from __future__ import annotations

import logging
import time

from mailstream.core.ingest_batch import NOT_READ
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery.state_machine import Delivery, delivery_key, note_feedback
from mailstream.feedback.normalised import LIFT, Feedback, FeedbackSettings, apply_feedback
from mailstream.kafka.intake import Intake
from mailstream.kafka.partitioning import partition_for
from mailstream.kafka.records import RawMessage
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime
from mailstream.state.staged_flush import STATE_LOCK, Outbox, flush
from mailstream.workflows.apply_effects import dead_letter_counted

logger = logging.getLogger(__name__)


class FeedbackApplier:
    """Applies the feedback of the partitions of the feedback topic this worker owns."""

    def __init__(self, rt: Runtime) -> None:
        config = rt.config
        self.rt = rt
        self.config = config
        self.topic = config.topics.feedback
        self.users = rt.tables.users
        self.deliveries = rt.tables.deliveries
        # Feedback changes user records, as the ingest agent does: its batches take
        # STATE_LOCK.
        self.intake = Intake(self.users, [self.topic], lock=STATE_LOCK)
        self.settings = FeedbackSettings(
            soft_bounces=config.feedback.soft_bounces,
            soft_bounce_window_ms=int(config.feedback.soft_bounce_window * 1000),
        )

    async def apply_batch(self, messages: list[RawMessage]) -> None:
        """Apply a batch of feedback; call with STATE_LOCK held."""
        fresh = await self.intake.fresh(messages, self.topic)
        if not fresh:
            return
        now_s = int(time.time())
        outbox = Outbox()
        states: dict[tuple[int, bytes], UserState] = {}
        for m in fresh:
            home = None if m.key is None else partition_for(m.key, self.config.topics.partitions)
            if home is not None and home != m.partition:
                # Written by something that partitions otherwise: applied here it would start
                # a second record for the user. Copied to the user's partition first.
                outbox.send(self.topic, m.key, m.value or b"", list(m.headers), home, m.partition)
                metrics.FEEDBACK.labels(NOT_READ, "rerouted").inc()
                continue
            try:
                fb = Feedback.decode(m.value or b"")
            except (ValueError, TypeError) as exc:
                dead_letter_counted(outbox, self.config.topics.dlq, m, "bad_feedback", str(exc))
                continue
            if not fb.user_id:
                metrics.FEEDBACK.labels(fb.kind, "no_user").inc()
                continue
            slot = (
                m.partition,
                user_key(fb.tenant_id or self.config.ingest.default_tenant, fb.user_id),
            )
            state = states.get(slot)
            if state is None:
                stored = self.users.get(*slot)
                if stored is None and fb.kind == LIFT:  # nothing to lift
                    metrics.FEEDBACK.labels(fb.kind, "no_user").inc()
                    continue
                # Feedback can overtake the user's own first events (another topic): it
                # starts the record rather than be lost, and their identify fills it in.
                tenant = fb.tenant_id or self.config.ingest.default_tenant
                state = UserState.decode(stored) if stored else UserState(tenant, fb.user_id)
            # Providers retry webhooks: an event they sent before changes nothing again.
            if fb.event_id is not None:
                marker = f"feedback:{fb.provider}:{fb.event_id}"
                if marker in state.seen:
                    metrics.FEEDBACK.labels(fb.kind, "duplicate").inc()
                    continue
                state.seen.add(marker, now_s)
            done = apply_feedback(state, fb, self.settings)
            states[slot] = state
            metrics.FEEDBACK.labels(fb.kind, done or "no_change").inc()
            if done in ("hard_bounce", "complaint", "unsubscribe"):
                metrics.SUPPRESSED.labels(done).inc()
            if fb.send_id:
                self._note_delivery(outbox, m.partition, fb)
        for (partition, key), state in states.items():
            outbox.put(self.users, partition, key, state.encode())
        self.intake.put_progress(outbox, fresh, self.topic)
        await flush(self.rt.writer, outbox)

    def _note_delivery(self, outbox: Outbox, partition: int, fb: Feedback) -> None:
        assert fb.send_id is not None
        key = delivery_key(fb.tenant_id or self.config.ingest.default_tenant, fb.send_id)
        # an earlier event of this batch may have changed it
        raw = outbox.get(self.deliveries, partition, key)
        if raw is None:
            return  # not sent by this deployment, or long forgotten
        delivery = Delivery.decode(raw)
        kind = f"{fb.kind}:{fb.bounce}" if fb.bounce else fb.kind
        if note_feedback(delivery, fb.at, kind):
            outbox.put(self.deliveries, partition, key, delivery.encode())


def register(rt: Runtime) -> None:
    """The Faust wiring: the feedback topic read directly, under STATE_LOCK."""
    applier = FeedbackApplier(rt)
    rt.read_through(applier.topic, "mailstream.feedback", applier.intake, applier.apply_batch)
