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

from mailstream.delivery.retention import plan_prune
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime
from mailstream.state.rocksdb_store import PartitionStore
from mailstream.state.staged_flush import Outbox, flush

logger = logging.getLogger(__name__)


class RetentionSweep:
    """Bounded runs over the finished records of the deliveries (and webhook calls)
    table of each partition this worker owns."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        retention = rt.config.retention
        # table, how long its finished records are kept (ms), whether it holds sends counters
        self.swept: list[tuple[PartitionStore, int, bool]] = [
            (rt.tables.deliveries, int(retention.deliveries * 1000), True)
        ]
        if rt.tables.webhook_calls is not None:
            self.swept.append((rt.tables.webhook_calls, int(retention.webhook_calls * 1000), False))
        # (table, partition) -> the key the next run starts from; lost on restart, which
        # only means the next pass starts at the beginning.
        self.cursors: dict[tuple[str, int], bytes] = {}

    async def prune(self, store: PartitionStore, keep_ms: int, counters: bool) -> None:
        """One bounded run over every partition of ``store`` this worker owns."""
        now = int(time.time() * 1000)
        outbox = Outbox()
        deleted: Counter[str] = Counter()
        resume: dict[tuple[str, int], bytes] = {}
        for p in store.active_partitions():
            slot = (store.name, p)
            records = store.items(p, self.cursors.get(slot, b""))
            batch = self.rt.config.retention.sweep_batch
            plan = plan_prune(records, now, keep_ms, batch, counters)
            resume[slot] = plan.resume
            for key, kind in plan.deletes:
                outbox.put(store, p, key, None)
                deleted[kind] += 1
        if outbox:
            await flush(self.rt.writer, outbox)
            for kind, n in deleted.items():
                metrics.RECORDS_PRUNED.labels(store.name, kind).inc(n)
            logger.info("retention: deleted %s from %s", dict(deleted), store.name)
        # only once deleted: a failed run reads the same records again
        self.cursors.update(resume)

    async def run(self) -> None:
        """Only on a settled worker: its view of its partitions is then complete."""
        if not self.rt.settled():
            return
        for store, keep_ms, counters in self.swept:
            try:
                await self.prune(store, keep_ms, counters)
            except Exception:  # the next run tries again; a timer that raised would stop
                logger.exception("retention: the sweep of %s failed", store.name)


def register(rt: Runtime) -> None:
    rt.app.timer(interval=rt.config.retention.sweep_every)(RetentionSweep(rt).run)
