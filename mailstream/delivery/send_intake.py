"""Send commands in: each new one recorded as queued, a send id seen before counted as a
duplicate, and what is not a send command of this deployment dead-lettered."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mailstream.core.cluster_trust import ClusterKey
from mailstream.core.tenants import Tenancy
from mailstream.delivery.dispatch_shell import Flush, QueueTables
from mailstream.delivery.send_command import decode_send_command, verified_send_command
from mailstream.delivery.send_dispatcher import observe_path
from mailstream.delivery.state_machine import Delivery, accept, delivery_key
from mailstream.kafka.intake import Intake
from mailstream.kafka.partitioning import misplaced, partition_count
from mailstream.kafka.records import RawMessage
from mailstream.observability import metrics
from mailstream.state.staged_flush import BEFORE_STATE, Outbox
from mailstream.workflows.apply_effects import dead_letter_counted

logger = logging.getLogger(__name__)


class Submit(Protocol):
    """The dispatcher's ``submit`` (mailstream.delivery.send_dispatcher): True once the
    outbox is durable in its next round's flush, False: flush it yourself."""

    async def __call__(self, accepted: Outbox) -> bool: ...


class SendIntake:
    """Accepts batches of send commands into the deliveries table and its queue."""

    def __init__(
        self,
        *,
        intake: Intake,
        topics: Sequence[str],
        tables: QueueTables,
        cluster: ClusterKey,
        tenancy: Tenancy,
        producer: Callable[[], Any],
        flush: Flush,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.intake, self.topics, self.tables = intake, topics, tables
        self.cluster, self.tenancy = cluster, tenancy
        self.producer, self.flush, self.clock = producer, flush, clock
        # set once the dispatcher runs: its submit, and its wake
        self.submit: Submit | None = None
        self.wake: Callable[[], None] | None = None

    def _dead_letter(self, outbox: Outbox, m: RawMessage, code: str, reason: str) -> None:
        dead_letter_counted(outbox, self.tables.dlq_topic, m, code, reason)

    async def accept(self, messages: list[RawMessage]) -> None:
        """Record each new send command as queued; a send id seen before is a duplicate."""
        now = int(self.clock() * 1000)
        outbox = Outbox()
        batch: dict[tuple[int, bytes], Delivery] = {}
        # the triggering events' times of the commands taken, and of those queued
        taken_at: list[Any] = []
        queued_at: list[Any] = []
        for topic in self.topics:
            fresh = await self.intake.fresh(messages, topic)
            partitions = await partition_count(self.producer(), topic) if fresh else None
            for m in fresh:
                # Only what a worker of this deployment wrote, where it wrote it: anyone else
                # with access to the broker could otherwise have any text mailed to any
                # address, or a command sent again from another partition.
                wrong = misplaced(m.key, m.partition, partitions)
                if wrong is not None:
                    self._dead_letter(outbox, m, "misplaced_command", wrong)
                    continue
                signed = verified_send_command(self.cluster, m.key, m.value)
                if isinstance(signed, str):
                    self._dead_letter(outbox, m, "untrusted_command", signed)
                    logger.warning(
                        "send command on %s[%d] at offset %d dead-lettered: %s",
                        m.topic,
                        m.partition,
                        m.offset,
                        signed,
                    )
                    continue
                command = decode_send_command(signed)
                if isinstance(command, str):
                    self._dead_letter(outbox, m, "bad_send_command", command)
                    continue
                taken_at.append(command.get("event_at"))
                if self._queue(outbox, batch, m, command, now):
                    queued_at.append(command.get("event_at"))
            self.intake.put_progress(outbox, fresh, topic)
        observe_path("taken", taken_at, now / 1000)
        if outbox:
            # Durable with the dispatcher's next round, which may choose these sends in the
            # same flush; on their own when no round takes them.
            if self.submit is None or not await self.submit(outbox):
                await self.flush(outbox)
                if self.wake is not None:
                    self.wake()
            observe_path("queued", queued_at, self.clock())

    def _queue(
        self,
        outbox: Outbox,
        batch: dict[tuple[int, bytes], Delivery],
        m: RawMessage,
        command: dict[str, Any],
        now: int,
    ) -> bool:
        """Queue one valid command; False if it is not queued (a duplicate, or a tenant
        this deployment does not serve)."""
        tenant = command["tenant_id"]
        if not self.tenancy.known(tenant):
            reason = f"tenant_id {tenant!r} is not configured under tenants:"
            self._dead_letter(outbox, m, "unknown_tenant", reason)
            return False
        record_key = delivery_key(tenant, command["send_id"])
        slot = (m.partition, record_key)
        existing = batch.get(slot)
        if existing is None:
            raw = self.tables.records.get(m.partition, record_key)
            existing = Delivery.decode(raw) if raw is not None else None
        delivery = accept(existing, command, now, self.tenancy.lane(tenant))
        label = self.tenancy.label(tenant)
        if delivery is None:
            metrics.labelled(metrics.DELIVERIES, command["category"], "deduplicated", label).inc()
            return False
        assert delivery.queue_key is not None
        batch[slot] = delivery
        # The queued command first: a record without it would make a replay skip it.
        outbox.put(self.tables.queue, m.partition, delivery.queue_key, m.value, BEFORE_STATE)
        self.tables.write(outbox, m.partition, record_key, delivery)
        metrics.labelled(metrics.DELIVERIES, command["category"], "queued", label).inc()
        return True
