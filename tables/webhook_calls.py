"""The webhook calls table (one record per webhook id, the deliveries' record format:
queued, attempting, sent, failed; see mailstream.webhooks_out.call_state) and the webhook
queue (the calls waiting to be made, in ready-time order)."""

from __future__ import annotations

from typing import Any

from mailstream.delivery.state_machine import queue_ready
from mailstream.state.rocksdb_store import PartitionStore, raw_table


def webhook_tables(app: Any, partitions: int) -> tuple[PartitionStore, PartitionStore]:
    """The webhook calls table and the webhook queue."""
    calls = raw_table(
        app,
        "webhook_calls",
        partitions,
        "Webhook call records (mailstream.delivery.state_machine.Delivery) keyed by "
        "webhook id; progress.",
    )
    queue = raw_table(
        app,
        "webhook_queue",
        partitions,
        "Waiting webhook calls: ready time and webhook id "
        "(mailstream.delivery.state_machine.QueueKey) -> command.",
        due=queue_ready,
    )
    return calls, queue
