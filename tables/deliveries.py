"""The deliveries table (one record per send id: queued, attempting, sent, failed or
unknown; see mailstream.delivery.state_machine) and the delivery queue (the sends waiting
to go, in the order they may go: transactional first, then by ready time)."""

from __future__ import annotations

from typing import Any

from mailstream.delivery.retention import SENT_PREFIX
from mailstream.delivery.state_machine import queue_ready
from mailstream.state.rocksdb_store import PartitionStore, raw_table


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


def sent_key(day: str, tenant: str | None = None) -> bytes:
    """The record counting a partition's sends on a UTC day (ISO date), for the warm-up
    cap and the dashboard, or only a tenant's (its delivery lane's), for its sends per
    day; the control byte keeps it apart from delivery keys."""
    key = SENT_PREFIX + day.encode()
    return key if tenant is None else key + b"\x1f" + tenant.encode()


def sent_on(deliveries: PartitionStore, partition: int, day: str, tenant: str | None = None) -> int:
    raw = deliveries.get(partition, sent_key(day, tenant))
    return int(raw) if raw is not None else 0
