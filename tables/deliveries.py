"""The deliveries table (one record per send id: queued, attempting, sent, failed or
unknown; see mailstream.delivery.state_machine) and the delivery queue (the sends waiting
to go, in the order they may go: transactional first, then by ready time)."""

from __future__ import annotations

from mailstream.delivery.retention import sent_key
from mailstream.delivery.state_machine import queue_ready
from mailstream.state.rocksdb_store import TableSpec
from mailstream.state.store import Store

DELIVERIES = TableSpec(
    "deliveries",
    "Delivery records (mailstream.delivery.state_machine.Delivery) keyed by send id;"
    " progress per send topic.",
)
DELIVERY_QUEUE = TableSpec(
    "delivery_queue",
    "Waiting sends: rank, ready time and send id (mailstream.delivery.state_machine"
    ".QueueKey) -> command.",
    due=queue_ready,
)


def sent_on(deliveries: Store, partition: int, day: str, tenant: str | None = None) -> int:
    """How many sends a partition made on a UTC day (ISO date), or a tenant's lane."""
    raw = deliveries.get(partition, sent_key(day, tenant))
    return int(raw) if raw is not None else 0
