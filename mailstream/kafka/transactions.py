"""Exactly-once (``processing_guarantee: exactly_once``): every flush commits in Kafka
transactions, one per partition of the tables.

Each partition of the tables has one transactional producer per role (the users' state,
deliveries, webhook calls, the replay guard), ``{app_id}.tx.{role}.{partition}``, on the
worker that owns the partition. Everything a flush writes for that partition (its
changelog records, the send commands, webhook commands and dead letters that belong with
them, its progress records, which are the consumer positions) goes in one transaction:
readers, which all read committed records only, see all of it or none.

A worker starts the producers of the partitions it is given before its tables recover
(``Transactions.install``). Starting one registers the transactional id with the broker,
which aborts whatever transaction the partition's previous owner left open and fences
that owner: a worker that was dropped from its group and wakes up can no longer commit
anything for the partition, and is told so at its next commit (``ProducerFenced``). The
new owner then recovers only committed records, so it goes on from exactly what its
predecessor made durable.

A producer whose transaction failed (a broker lost mid-commit, aiokafka's
OutOfOrderSequence after an outage) is dropped and a new one started for the next flush:
starting it aborts the failed transaction, and the flush is tried again from the local
state, which has none of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from mailstream.exceptions import BrokerError
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.clients import start_client
from mailstream.observability import metrics
from mailstream.state.staged_flush import STAGES, Committed, Outbox, send_records
from mailstream.state.store import Store

logger = logging.getLogger(__name__)

Slot = tuple[Store, int]


class Fenced(Exception):
    """Another worker has started this partition's transactions since: the flush did not
    commit, and this worker no longer owns the partition."""


TXN_RETRY_BACKOFF_MS = 10

# A transactional producer: (role, partition of the tables)
Key = tuple[str, int]


class Transactions:
    """The transactional producers of the partitions this worker owns, one per role and
    partition, each used by one flush at a time.

    ``roles``: table name -> the role of the flushes that write it (the ingest and timers
    write the users' state, the delivery agent its records and queue, ...). A flush
    commits through its role's producers, so that the delivery agent's transactions do
    not wait for the ingest's on the same partition. ``owned()``: the partitions the
    worker owns now. ``rebalancing()``: whether the group is moving partitions (then a
    fenced flush is the expected end of a moved partition's last round).
    ``lost(message)``: called when a producer is fenced while the worker still owns its
    partition, which means the group dropped this worker without its noticing; it exits
    (mailstream.kafka.membership.exit_paused)."""

    def __init__(
        self,
        access: KafkaAccess,
        app_id: str,
        partitions: int,
        roles: Mapping[str, str],
        owned: Callable[[], Iterable[int]],
        rebalancing: Callable[[], bool],
        lost: Callable[[str], None],
        producer_options: dict[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.access = access
        self.app_id = app_id
        self.partitions = partitions
        self.roles = dict(roles)
        self.role_names = sorted(set(self.roles.values()))
        self.owned = owned
        self.rebalancing = rebalancing
        self.lost = lost
        self.options = producer_options or {}
        self.timeout = timeout
        self._producers: dict[Key, AIOKafkaProducer] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # (role, topic, partition) -> the offset of the last message that role's producer
        # of the partition committed there
        self._last_written: dict[tuple[str, str, int], int] = {}

    def transactional_id(self, role: str, partition: int) -> str:
        return f"{self.app_id}.tx.{role}.{partition}"

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def role_of(self, outbox: Outbox) -> str:
        """The role of the flush of ``outbox``: that of the first table it writes."""
        names = sorted({store.name for slots in outbox.writes.values() for store, _ in slots})
        return self.roles.get(names[0], self.role_names[0]) if names else self.role_names[0]

    async def _producer(self, key: Key) -> AIOKafkaProducer:
        producer = self._producers.get(key)
        if producer is not None:
            return producer
        producer = AIOKafkaProducer(
            **self.access.client_kwargs(),
            **self.options,
            acks="all",
            enable_idempotence=True,
            # The broker answers CONCURRENT_TRANSACTIONS while it writes the previous
            # transaction's markers, and aiokafka waits the retry backoff before asking
            # again: 100 ms by default, a long time beside a flush.
            retry_backoff_ms=TXN_RETRY_BACKOFF_MS,
            transactional_id=self.transactional_id(*key),
            transaction_timeout_ms=int(self.timeout * 1000),
        )
        # registers the transactional id: aborts the previous owner's open transaction
        # and fences it
        await asyncio.wait_for(start_client(producer), self.timeout)
        self._producers[key] = producer
        return producer

    def _drop(self, key: Key) -> None:
        # what follows a dropped producer's last transaction is not known (an abort)
        role = key[0]
        self._last_written = {k: v for k, v in self._last_written.items() if k[0] != role}
        producer = self._producers.pop(key, None)
        if producer is not None:
            self._close_later(producer)

    def _close_later(self, producer: AIOKafkaProducer) -> None:
        task = asyncio.get_running_loop().create_task(_close(producer))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def take_over(self, owned: Iterable[int]) -> None:
        """Start the producers of the ``owned`` partitions that have none (fencing
        their previous owners), and drop those of partitions no longer owned. Called
        when the group gives this worker its partitions, before the tables recover."""
        wanted = {(role, p) for role in self.role_names for p in owned}
        for key in sorted(set(self._producers) - wanted):
            async with self._lock(key):
                self._drop(key)

        async def start(key: Key) -> None:
            async with self._lock(key):
                await self._producer(key)

        await asyncio.gather(*(start(key) for key in sorted(wanted)))

    async def commit_outbox(self, outbox: Outbox) -> tuple[dict[Slot, int], list[Committed]]:
        """Commit ``outbox``, one transaction per partition it writes, all at once. Raises
        the first failure once every transaction has committed or been given up: what
        committed is then in the changelogs, and the caller, whose local state has none
        of it, tries again (its progress records make the retry apply each input once)."""
        role = self.role_of(outbox)
        parts = sorted(outbox.by_origin(self.partitions).items())
        locks = [self._lock((role, partition)) for partition, _ in parts]
        for lock in locks:  # in partition order, so two flushes cannot deadlock
            await lock.acquire()
        try:
            results = await asyncio.gather(
                *(self._commit_part((role, partition), part) for partition, part in parts),
                return_exceptions=True,
            )
        finally:
            for lock in reversed(locks):
                lock.release()
        last: dict[Slot, int] = {}
        committed: list[Committed] = []
        for result, (_, part) in zip(results, parts, strict=True):
            if isinstance(result, BaseException):
                raise result
            acked, written = result
            last.update(acked)
            committed.append((part.messages, written, self._follow_on(role, written)))
        return last, committed

    def _follow_on(self, role: str, written: list[Any]) -> dict[tuple[str, int], int]:
        """Per (topic, partition) of ``written`` (a transaction's messages, as the broker
        placed them), the offset its first message there follows on from: right after
        the last message of this producer's previous transaction there when the offset
        between holds its marker (a producer's marker lies between its transactions'
        records, and one offset leaves room for nothing else); else the message's own
        offset. A reader of the handed-over messages then goes on without a fetch."""
        since: dict[tuple[str, int], int] = {}
        for md in written:
            tp = (md.topic, md.partition)
            if tp not in since:
                previous = self._last_written.get((role, *tp))
                gap = previous is not None and md.offset == previous + 2
                since[tp] = previous + 1 if gap and previous is not None else md.offset
            self._last_written[(role, *tp)] = md.offset
        return since

    async def _commit_part(self, key: Key, part: Outbox) -> tuple[dict[Slot, int], list[Any]]:
        producer = await self._producer(key)
        try:
            return await asyncio.wait_for(self._transaction(producer, part), self.timeout)
        except ProducerFenced as exc:
            self._drop(key)
            metrics.TRANSACTIONS.labels("fenced").inc()
            raise self._fenced(key) from exc
        except BaseException:
            # a new producer for the next flush: starting it aborts this transaction
            self._drop(key)
            metrics.TRANSACTIONS.labels("failed").inc()
            raise

    async def _transaction(
        self, producer: AIOKafkaProducer, part: Outbox
    ) -> tuple[dict[Slot, int], list[Any]]:
        await producer.begin_transaction()
        # Every stage's records in one send, in stage order: the commit makes them
        # readable together, so no stage needs to wait for the one before it.
        records: dict[Slot, dict[bytes, bytes | None]] = {}
        for stage in STAGES:
            for slot, items in part.writes[stage].items():
                records.setdefault(slot, {}).update(items)
        last, written = await send_records(producer, records, part.messages)
        await producer.commit_transaction()
        metrics.TRANSACTIONS.labels("committed").inc()
        return last, written

    def _fenced(self, key: Key) -> Fenced:
        partition = key[1]
        message = (
            f"partition {partition}'s transactions were taken over by another worker"
            f" ({self.transactional_id(*key)} fenced)"
        )
        if partition in set(self.owned()) and not self.rebalancing():
            self.lost(
                f"{message} while this worker still held the partition: the group has"
                " dropped it. Exiting so that a restart rebuilds its state from the"
                " changelogs"
            )
        return Fenced(message)

    async def close(self) -> None:
        for key in list(self._producers):
            self._drop(key)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=self.timeout)


async def _close(producer: AIOKafkaProducer) -> None:
    # A transaction that failed (fenced, say) leaves its error on aiokafka's transaction
    # waiter, which only a commit or an abort would read; read here, or it is logged as
    # never retrieved when collected.
    manager = getattr(producer, "_txn_manager", None)
    waiter = getattr(manager, "_transaction_waiter", None)
    if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
        waiter.exception()
    try:
        await producer.stop()
    except Exception as exc:  # a producer given up on may fail to close; nothing waits on it
        logger.debug("closing a transactional producer: %r", exc)


def install(app: Any, transactions: Transactions) -> None:
    """Have ``app`` start the transactional producers of its partitions (fencing their
    previous owners) each time the group assigns them, before its tables recover (which
    read committed records only: mailstream.kafka.embedded_quirks.install)."""
    tables = app.tables
    recover = tables.on_rebalance

    async def take_over_then_recover(
        assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0
    ) -> None:
        await transactions.take_over(transactions.owned())
        await recover(assigned, revoked, newly_assigned, generation_id)

    tables.on_rebalance = take_over_then_recover


# How far back from a partition's end ``committed_ends`` first looks for its last record:
# a committed transaction ends with one marker per partition it wrote, so the last record
# is usually the offset before the end's.
TAIL = 64


async def committed_ends(
    access: KafkaAccess, listed: dict[Any, int], timeout: float = 10.0
) -> dict[Any, int]:
    """The offset after the last committed record of each partition in ``listed``
    (partition -> its end offset for a read_committed reader, the last stable offset).

    Faust's table recovery reads a changelog until it has seen the record before the end
    offset; with transactions that offset holds a commit or abort marker, which no reader
    sees, and recovery would wait forever. So it is given the offset after the last record
    it will see: each partition's tail is read, committed records only, from ``TAIL``
    before its end (further back when that holds none). Raises BrokerError when the tails
    cannot be read within ``timeout``."""
    probed = {TopicPartition(tp.topic, tp.partition): tp for tp, end in listed.items() if end}
    ends = {tp: 0 for tp in listed}
    if not probed:
        return ends
    consumer = AIOKafkaConsumer(
        **access.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=100,
    )
    await start_client(consumer)
    try:
        consumer.assign(list(probed))
        deadline = time.monotonic() + timeout
        back = TAIL
        pending = set(probed)
        while pending:
            for tp in pending:
                consumer.seek(tp, max(0, listed[probed[tp]] - back))
            reading = set(pending)
            while reading:
                if time.monotonic() > deadline:
                    names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(reading))
                    raise BrokerError(f"could not read the tails of {names} within {timeout:.0f}s")
                batches = await consumer.getmany(*reading, timeout_ms=100)
                for tp, records in batches.items():
                    if records:
                        ends[probed[tp]] = max(ends[probed[tp]], records[-1].offset + 1)
                for tp in list(reading):
                    if await consumer.position(tp) >= listed[probed[tp]]:
                        reading.discard(tp)
            pending = {
                tp for tp in pending if not ends[probed[tp]] and listed[probed[tp]] - back > 0
            }
            back *= 8
        return ends
    finally:
        await consumer.stop()
