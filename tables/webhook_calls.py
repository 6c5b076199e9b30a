"""The webhook calls table (one record per webhook id, the deliveries' record format:
queued, attempting, sent, failed; see mailstream.webhooks_out.call_state) and the webhook
queue (the calls waiting to be made, in ready-time order)."""

from __future__ import annotations

from mailstream.delivery.state_machine import queue_ready
from mailstream.state.rocksdb_store import TableSpec

WEBHOOK_CALLS = TableSpec(
    "webhook_calls",
    "Webhook call records (mailstream.delivery.state_machine.Delivery) keyed by webhook id;"
    " progress.",
)
WEBHOOK_QUEUE = TableSpec(
    "webhook_queue",
    "Waiting webhook calls: ready time and webhook id (mailstream.delivery.state_machine"
    ".QueueKey) -> command.",
    due=queue_ready,
)
