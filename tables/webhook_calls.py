"""The webhook calls table (one record per webhook id, the deliveries' record format:
queued, attempting, sent, failed; see mailstream.webhook_step.calls) and the webhook
queue (the calls waiting to be made, in ready-time order)."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.delivery import queue_ready
from mailstream.storage import raw_table

webhook_calls = raw_table(
    app,
    "webhook_calls",
    config.topics.partitions,
    "Webhook call records (mailstream.delivery.Delivery) keyed by webhook id; progress.",
)
webhook_queue = raw_table(
    app,
    "webhook_queue",
    config.topics.partitions,
    "Waiting webhook calls: ready time and webhook id (mailstream.delivery.QueueKey) -> command.",
    due=queue_ready,
)
