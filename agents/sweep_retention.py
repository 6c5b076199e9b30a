"""The retention sweep: deletes finished deliveries and webhook calls older than their
retention, and past days' sends counters, so those tables do not grow with every send.

Each run reads at most ``retention.sweep_batch`` records per owned partition and table,
from where the last run stopped (mailstream.delivery.retention decides what goes), and deletes
through the outbox, so the deletions reach the changelogs like every other write.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from mailstream.app import app, config, settled
from mailstream.delivery.retention import plan_prune
from mailstream.observability import metrics
from mailstream.state.staged_flush import Outbox, flush
from mailstream.state.store import Store
from tables.deliveries import deliveries

logger = logging.getLogger(__name__)

# table, how long its finished records are kept (ms), whether it holds sends counters
SWEPT: list[tuple[Store, int, bool]] = [(deliveries, int(config.retention.deliveries * 1000), True)]
if config.webhooks_out:  # the table exists only where webhook steps are configured
    from tables.webhook_calls import webhook_calls

    SWEPT.append((webhook_calls, int(config.retention.webhook_calls * 1000), False))

# (table, partition) -> the key the next run starts from; lost on restart, which only
# means the next pass starts at the beginning.
cursors: dict[tuple[str, int], bytes] = {}


async def prune(store: Store, keep_ms: int, counters: bool) -> None:
    """One bounded run over every partition of ``store`` this worker owns."""
    now = int(time.time() * 1000)
    outbox = Outbox()
    deleted: Counter[str] = Counter()
    resume: dict[tuple[str, int], bytes] = {}
    for p in store.active_partitions():
        slot = (store.name, p)
        records = store.items(p, cursors.get(slot, b""))
        plan = plan_prune(records, now, keep_ms, config.retention.sweep_batch, counters)
        resume[slot] = plan.resume
        for key, kind in plan.deletes:
            outbox.put(store, p, key, None)
            deleted[kind] += 1
    if outbox:
        await flush(app.producer, outbox)
        for kind, n in deleted.items():
            metrics.RECORDS_PRUNED.labels(store.name, kind).inc(n)
        logger.info("retention: deleted %s from %s", dict(deleted), store.name)
    cursors.update(resume)  # only once deleted: a failed run reads the same records again


@app.timer(interval=config.retention.sweep_every)
async def prune_finished_records() -> None:
    """Only on a settled worker: its view of its partitions is then complete."""
    if not settled():
        return
    for store, keep_ms, counters in SWEPT:
        try:
            await prune(store, keep_ms, counters)
        except Exception:  # the next run tries again; a timer that raised would stop
            logger.exception("retention: the sweep of %s failed", store.name)
