"""The deliveries table (one record per send id: queued, attempting, sent, failed or
unknown; see mailstream.delivery.state_machine) and the delivery queue (the sends waiting to go, in
the order they may go: transactional first, then by ready time)."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.delivery.retention import sent_key
from mailstream.delivery.state_machine import queue_ready
from mailstream.state.rocksdb_store import raw_table

deliveries = raw_table(
    app,
    "deliveries",
    config.topics.partitions,
    "Delivery records (mailstream.delivery.state_machine.Delivery) keyed by send id; "
    "progress per send topic.",
)
delivery_queue = raw_table(
    app,
    "delivery_queue",
    config.topics.partitions,
    "Waiting sends: rank, ready time and send id "
    "(mailstream.delivery.state_machine.QueueKey) -> command.",
    due=queue_ready,
)


def sent_on(partition: int, day: str, tenant: str | None = None) -> int:
    raw = deliveries.get(partition, sent_key(day, tenant))
    return int(raw) if raw is not None else 0
