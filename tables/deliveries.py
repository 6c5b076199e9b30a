"""The deliveries table (one record per send id: queued, attempting, sent, failed or
unknown; see mailstream.delivery.state_machine) and the delivery queue (the sends waiting
to go, in the order they may go: transactional first, then by ready time)."""

from __future__ import annotations

from typing import Any

from mailstream.delivery.retention import sent_key
from mailstream.delivery.state_machine import queue_ready
from mailstream.state.rocksdb_store import PartitionStore, raw_table
from mailstream.state.store import Store


def delivery_tables(app: Any, partitions: int) -> tuple[PartitionStore, PartitionStore]:
    """The deliveries table and the delivery queue."""
    deliveries = raw_table(
        app,
        "deliveries",
        partitions,
        "Delivery records (mailstream.delivery.state_machine.Delivery) keyed by send id; "
        "progress per send topic.",
    )
    queue = raw_table(
        app,
        "delivery_queue",
        partitions,
        "Waiting sends: rank, ready time and send id "
        "(mailstream.delivery.state_machine.QueueKey) -> command.",
        due=queue_ready,
    )
    return deliveries, queue


def sent_on(deliveries: Store, partition: int, day: str, tenant: str | None = None) -> int:
    """How many sends a partition made on a UTC day (ISO date), or a tenant's lane."""
    raw = deliveries.get(partition, sent_key(day, tenant))
    return int(raw) if raw is not None else 0
