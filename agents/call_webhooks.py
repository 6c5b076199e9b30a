"""The webhook agent: webhook step commands in, signed calls out, each webhook id called
until it succeeds once, with retries and a circuit breaker per URL.

As with email delivery, two actors share the webhook calls table: ``accept_commands``
records each new command as queued; the dispatcher (mailstream.webhooks_out.call_dispatcher)
takes calls that are due and makes them, and records the outcomes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mailstream.app import app, config, settled
from mailstream.config.webhooks_out_settings import build_endpoints
from mailstream.core.ingest_batch import RawMessage
from mailstream.delivery.dispatch_shell import QueueTables, flush_with
from mailstream.delivery.state_machine import Delivery
from mailstream.kafka.backfill import QUIET_SECONDS, Intake
from mailstream.kafka.partitioning import misplaced, partition_count
from mailstream.observability import metrics
from mailstream.runtime.components import cluster
from mailstream.state.staged_flush import BEFORE_STATE, Outbox
from mailstream.webhooks_out.call_command import decode_command, verified_command
from mailstream.webhooks_out.call_dispatcher import CallDispatcher
from mailstream.webhooks_out.call_state import accept_call
from mailstream.workflows.apply_effects import dead_letter_message
from tables.users import users
from tables.webhook_calls import webhook_calls, webhook_queue

logger = logging.getLogger(__name__)

TOPIC = config.topics.webhooks
# The agent and the tail sweep both accept commands, one batch at a time.
intake = Intake(webhook_calls, [TOPIC], config.bootstrap_servers)
endpoints = build_endpoints(config.webhooks_out)
tables = QueueTables(webhook_calls, webhook_queue, config.topics.dlq, "webhooks")
flush_outbox = flush_with(lambda: app.producer)


async def accept_batch(messages: list[RawMessage]) -> None:
    """Record each new command as queued; a webhook id seen before is a duplicate."""
    now = int(time.time() * 1000)
    outbox = Outbox()
    fresh = await intake.fresh(messages, TOPIC)
    partitions = await partition_count(app.producer, TOPIC) if fresh else None
    batch: dict[tuple[int, str], Delivery] = {}
    for m in fresh:
        # Only what a worker of this deployment wrote, where it wrote it: the endpoint's
        # signature would otherwise vouch for anything anyone with access to the broker
        # put here, or for a command called again from another partition.
        wrong = misplaced(m.key, m.partition, partitions)
        if wrong is not None:
            dead_letter_message(outbox, config.topics.dlq, m, "misplaced_command", wrong)
            metrics.DEAD_LETTERS.labels("misplaced_command").inc()
            metrics.WEBHOOK_COMMANDS.labels("unknown", "untrusted").inc()
            continue
        signed = verified_command(cluster, m.key, m.value)
        if isinstance(signed, str):
            dead_letter_message(outbox, config.topics.dlq, m, "untrusted_command", signed)
            metrics.DEAD_LETTERS.labels("untrusted_command").inc()
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
            dead_letter_message(outbox, config.topics.dlq, m, "bad_webhook_command", command)
            metrics.DEAD_LETTERS.labels("bad_webhook_command").inc()
            metrics.WEBHOOK_COMMANDS.labels("unknown", "bad_command").inc()
            continue
        name = command["endpoint"]
        if name not in endpoints:
            reason = f"endpoint {name!r} is not under webhooks_out ({', '.join(endpoints)})"
            dead_letter_message(outbox, config.topics.dlq, m, "unknown_endpoint", reason)
            metrics.DEAD_LETTERS.labels("unknown_endpoint").inc()
            metrics.WEBHOOK_COMMANDS.labels("unknown", "unknown_endpoint").inc()
            continue
        webhook_id = command["webhook_id"]
        slot = (m.partition, webhook_id)
        existing = batch.get(slot)
        if existing is None:
            raw = webhook_calls.get(m.partition, webhook_id.encode())
            existing = Delivery.decode(raw) if raw is not None else None
        call = accept_call(existing, command, now)
        if call is None:
            metrics.WEBHOOK_COMMANDS.labels(name, "deduplicated").inc()
            continue
        assert call.queue_key is not None
        batch[slot] = call
        # The queued command first: a record without it would make a replay skip it.
        outbox.put(webhook_queue, m.partition, call.queue_key, m.value, BEFORE_STATE)
        outbox.put(webhook_calls, m.partition, webhook_id.encode(), call.encode())
        metrics.WEBHOOK_COMMANDS.labels(name, "queued").inc()
    intake.put_progress(outbox, fresh, TOPIC)
    if outbox:
        await flush_outbox(outbox)


# The Faust wiring.
webhooks_topic = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")


@app.agent(webhooks_topic, name="mailstream.webhooks")
async def accept_commands(stream: Any) -> None:
    """Acknowledge webhook commands only once they are durably queued."""
    await intake.consume(stream, accept_batch)


@app.timer(interval=QUIET_SECONDS)
async def sweep_skipped_webhook_tails() -> None:
    """Commands the consumer skipped at the end of a quiet partition."""
    if settled():
        await intake.sweep(accept_batch)


@app.task
async def run_webhook_dispatcher() -> None:
    dispatcher = CallDispatcher(
        endpoints=endpoints, tables=tables, users=users, flush=flush_outbox, ready=settled
    )
    try:
        await dispatcher.run()
    finally:
        await intake.close()
