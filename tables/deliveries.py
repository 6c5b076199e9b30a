"""The deliveries table (one record per send id: queued, attempting, sent, failed or
unknown; see mailstream.delivery) and the delivery queue (the sends waiting to go, in
the order they may go: transactional first, then by ready time)."""

from __future__ import annotations

from mailstream.app import app, config
from mailstream.storage import raw_table

deliveries = raw_table(
    app,
    "deliveries",
    config.topics.partitions,
    "Delivery records (mailstream.delivery.Delivery) keyed by send id; progress per send topic.",
)
delivery_queue = raw_table(
    app,
    "delivery_queue",
    config.topics.partitions,
    "Waiting sends: rank, ready time and send id (mailstream.delivery.QueueKey) -> command.",
)
