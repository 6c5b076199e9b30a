"""The webhook agent: webhook step commands in, signed calls out, each webhook id called
until it succeeds once, with retries and a circuit breaker per URL.

As with email delivery, two actors share the webhook calls table: ``accept_commands``
records each new command as queued; the dispatcher (mailstream.webhooks_out.call_dispatcher)
takes calls that are due and makes them, and records the outcomes.
"""

from __future__ import annotations

import logging
import time

from mailstream.config.webhooks_out_settings import Endpoint
from mailstream.delivery.dispatch_shell import QueueTables, flush_with
from mailstream.delivery.state_machine import Delivery
from mailstream.kafka.intake import Intake
from mailstream.kafka.partitioning import misplaced, partition_count
from mailstream.kafka.records import RawMessage
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime
from mailstream.state.staged_flush import BEFORE_STATE, Outbox
from mailstream.webhooks_out.call_command import decode_command, verified_command
from mailstream.webhooks_out.call_dispatcher import CallDispatcher
from mailstream.webhooks_out.call_state import accept_call
from mailstream.workflows.apply_effects import dead_letter_counted

logger = logging.getLogger(__name__)


class WebhookCallAgent:
    """The intake and the dispatcher of the webhook topic's partitions this worker owns."""

    def __init__(self, rt: Runtime, endpoints: dict[str, Endpoint]) -> None:
        config = rt.config
        calls, queue = rt.tables.webhook_calls, rt.tables.webhook_queue
        assert calls is not None and queue is not None, "declared with webhooks_out"
        self.rt = rt
        self.config = config
        self.topic = config.topics.webhooks
        self.endpoints = endpoints
        self.webhook_calls, self.webhook_queue = calls, queue
        # The direct reader accepts commands, one batch at a time, under the intake's lock.
        self.intake = Intake(calls, [self.topic])
        self.tables = QueueTables(calls, queue, config.topics.dlq, "webhooks")
        self.flush = flush_with(lambda: rt.writer)

    async def accept_batch(self, messages: list[RawMessage]) -> None:
        """Record each new command as queued; a webhook id seen before is a duplicate."""
        now = int(time.time() * 1000)
        outbox = Outbox()
        fresh = await self.intake.fresh(messages, self.topic)
        partitions = await partition_count(self.rt.app.producer, self.topic) if fresh else None
        batch: dict[tuple[int, str], Delivery] = {}
        for m in fresh:
            # Only what a worker of this deployment wrote, where it wrote it: the endpoint's
            # signature would otherwise vouch for anything anyone with access to the broker
            # put here, or for a command called again from another partition.
            wrong = misplaced(m.key, m.partition, partitions)
            if wrong is not None:
                dead_letter_counted(outbox, self.config.topics.dlq, m, "misplaced_command", wrong)
                metrics.WEBHOOK_COMMANDS.labels("unknown", "untrusted").inc()
                continue
            signed = verified_command(self.rt.cluster, m.key, m.value)
            if isinstance(signed, str):
                dead_letter_counted(outbox, self.config.topics.dlq, m, "untrusted_command", signed)
                metrics.WEBHOOK_COMMANDS.labels("unknown", "untrusted").inc()
                logger.warning(
                    "webhook command on %s[%d] at offset %d dead-lettered: %s",
                    m.topic,
                    m.partition,
                    m.offset,
                    signed,
                )
                continue
            command = decode_command(signed)
            if isinstance(command, str):
                dead_letter_counted(
                    outbox, self.config.topics.dlq, m, "bad_webhook_command", command
                )
                metrics.WEBHOOK_COMMANDS.labels("unknown", "bad_command").inc()
                continue
            name = command["endpoint"]
            if name not in self.endpoints:
                reason = (
                    f"endpoint {name!r} is not under webhooks_out ({', '.join(self.endpoints)})"
                )
                dead_letter_counted(outbox, self.config.topics.dlq, m, "unknown_endpoint", reason)
                metrics.WEBHOOK_COMMANDS.labels("unknown", "unknown_endpoint").inc()
                continue
            webhook_id = command["webhook_id"]
            slot = (m.partition, webhook_id)
            existing = batch.get(slot)
            if existing is None:
                raw = self.webhook_calls.get(m.partition, webhook_id.encode())
                existing = Delivery.decode(raw) if raw is not None else None
            call = accept_call(existing, command, now)
            if call is None:
                metrics.WEBHOOK_COMMANDS.labels(name, "deduplicated").inc()
                continue
            assert call.queue_key is not None
            batch[slot] = call
            # The queued command first: a record without it would make a replay skip it.
            outbox.put(self.webhook_queue, m.partition, call.queue_key, m.value, BEFORE_STATE)
            outbox.put(self.webhook_calls, m.partition, webhook_id.encode(), call.encode())
            metrics.WEBHOOK_COMMANDS.labels(name, "queued").inc()
        self.intake.put_progress(outbox, fresh, self.topic)
        if outbox:
            await self.flush(outbox)

    async def run_dispatcher(self) -> None:
        dispatcher = CallDispatcher(
            endpoints=self.endpoints,
            tables=self.tables,
            users=self.rt.tables.users,
            flush=self.flush,
            ready=self.rt.settled,
        )
        await dispatcher.run()


def register(rt: Runtime, endpoints: dict[str, Endpoint]) -> None:
    """The Faust wiring."""
    app, agent = rt.app, WebhookCallAgent(rt, endpoints)
    # webhook commands acknowledged only once they are durably queued
    rt.read_through(agent.topic, "mailstream.webhooks", agent.intake, agent.accept_batch)
    app.task(agent.run_dispatcher)
