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

A transaction that fails (a broker lost mid-commit, aiokafka's OutOfOrderSequence after
an outage) is tried again, for up to ``timeout``, with a new producer: starting it
aborts the failed transaction, so the retry commits the same records once. Only the
worker that owns a partition ever starts its producers: one whose partition moved, or
whose producer was fenced, gets ``Fenced`` for it until the group gives it the partition
again, so a worker that falls behind its group cannot fence the partition's new owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from mailstream.exceptions import BrokerError, Fenced
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.clients import start_client
from mailstream.observability import metrics
from mailstream.state.staged_flush import STAGES, Committed, OnCommitted, Outbox, send_records
from mailstream.state.store import Store

logger = logging.getLogger(__name__)

Slot = tuple[Store, int]


__all__ = ["Fenced", "Transactions", "committed_ends", "install"]

TXN_RETRY_BACKOFF_MS = 10
# between two tries of a failed transaction: doubling from the first to the last
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 2.0

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
        # producers fenced since the group last gave this worker their partition: not
        # started again before it does (that would fence the partition's new owner)
        self._fenced: set[Key] = set()
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
        """The producer of ``key``; a new one only while this worker owns the partition,
        settled, and has not been fenced there since it was given it."""
        producer = self._producers.get(key)
        if producer is not None:
            return producer
        partition = key[1]
        if key in self._fenced or self.rebalancing() or partition not in set(self.owned()):
            raise Fenced(
                f"partition {partition} is not this worker's to write now"
                f" ({self.transactional_id(*key)} not started)"
            )
        return await self._start(key)

    async def _start(self, key: Key) -> AIOKafkaProducer:
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
        self._fenced -= wanted
        for key in sorted(set(self._producers) - wanted):
            async with self._lock(key):
                self._drop(key)

        async def start(key: Key) -> None:
            async with self._lock(key):
                if key not in self._producers:
                    await self._start(key)

        await asyncio.gather(*(start(key) for key in sorted(wanted)))

    async def commit_outbox(self, outbox: Outbox, committed: OnCommitted) -> None:
        """Commit ``outbox``, one transaction per partition it writes, all at once, and
        call ``committed`` for each that commits. Raises the first failure once every
        transaction has committed or been given up: the caller, whose local state has
        none of a failed part, tries it again or leaves it to the partition's new owner
        (its progress records make a retry apply each input once)."""
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
        failure: BaseException | None = None
        for result, (_, part) in zip(results, parts, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            acked, written = result
            done: Committed = (part.messages, written, self._follow_on(role, written))
            committed(part, acked, done)
        if failure is not None:
            raise failure

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
        """``part`` committed in one transaction of ``key``'s producer, tried again with a
        new producer while it fails for reasons of the cluster's, for up to ``timeout``."""
        deadline = time.monotonic() + self.timeout
        pause, tries = RETRY_FIRST_S, 0
        while True:
            tries += 1
            try:
                producer = await self._producer(key)
                left = max(0.1, deadline - time.monotonic())
                done = await asyncio.wait_for(self._transaction(producer, part), left)
                if tries > 1:
                    logger.info("%s committed at try %d", self.transactional_id(*key), tries)
                return done
            except Fenced:
                raise
            except ProducerFenced as exc:
                self._drop(key)
                self._fenced.add(key)
                metrics.TRANSACTIONS.labels("fenced").inc()
                raise self._fenced_now(key) from exc
            except BaseException as exc:
                # a new producer for the next try: starting it aborts this transaction
                self._drop(key)
                metrics.TRANSACTIONS.labels("failed").inc()
                if not _cluster_error(exc) or time.monotonic() + pause > deadline:
                    raise
                # one line per spell of failures (each failure is counted)
                logger.log(
                    logging.WARNING if tries == 1 else logging.DEBUG,
                    "a transaction of %s failed (%s: %s); trying again in %.1fs",
                    self.transactional_id(*key),
                    type(exc).__name__,
                    exc,
                    pause,
                )
            await asyncio.sleep(pause)
            pause = min(RETRY_MAX_S, pause * 2)

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

    def _fenced_now(self, key: Key) -> Fenced:
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


def _cluster_error(exc: BaseException) -> bool:
    """Whether a transaction failed for reasons of the cluster's (a broker lost, a
    timeout, aiokafka's state after an outage), which a new producer may get past;
    not for its records (one too large), nor cancelled."""
    if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError | RecordTooLargeError):
        return False
    return isinstance(exc, KafkaError | TimeoutError | OSError)


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
