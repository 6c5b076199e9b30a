"""The global suppression list: a compacted topic keyed by address, and each worker's copy.

Every worker reads the whole topic (all partitions, no group, committed records only)
into a local RocksDB store, so a lookup is a local read. Each write to the store carries
the partitions' next offsets and the address count, so a restart resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition

from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError, MailstreamError
from mailstream.kafka.access import KafkaAccess, kafka_access
from mailstream.kafka.clients import start_client
from mailstream.kafka.produce_once import produce_keyed
from mailstream.kafka.topics import topic_partitions
from mailstream.observability.metrics import SUPPRESSION_LIST_SIZE
from mailstream.suppression.entries import Suppression, normalise_address

logger = logging.getLogger(__name__)

# Store keys that cannot be addresses: the control byte sorts them apart, too.
COUNT_KEY = b"\x00count"
PROGRESS_PREFIX = b"\x00next:"
POLL_MS = 200
RETRY_SECONDS = 1.0
# How long to look for the record a stored offset follows before calling it lost.
PROBE_SECONDS = 2.0


def _progress_key(partition: int) -> bytes:
    return PROGRESS_PREFIX + str(partition).encode()


def _progress(value: Any) -> tuple[int, int]:
    """A stored progress value: the next offset and the digest of the record before it."""
    offset, digest = bytes(value).split(b":")
    return int(offset), int(digest)


def _digest(record: Any) -> int:
    return zlib.crc32(record.value or b"", zlib.crc32(record.key or b""))


def decode_record(record: Any) -> tuple[bytes, Suppression | None] | None:
    """A record's (address key, entry or None for a removal); None for a record to skip."""
    address = None
    if record.key is not None:
        try:
            address = normalise_address(record.key.decode())
        except UnicodeDecodeError:
            pass
    if address is None:
        logger.warning(
            "suppression list: record %s[%d]@%d has no address key; skipped",
            record.topic,
            record.partition,
            record.offset,
        )
        return None
    if record.value is None:
        return address.encode(), None
    try:
        return address.encode(), Suppression.decode(record.value)
    except ValueError as exc:
        logger.warning(
            "suppression list: record %s[%d]@%d is not a suppression (%s); skipped",
            record.topic,
            record.partition,
            record.offset,
            exc,
        )
        return None


async def caught_up(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    """Whether every partition's position has reached its end offset.

    tansu reports the end of a multi-record batch as its base offset plus one, so this
    can be true with records still unread: follow it with a poll that finds nothing."""
    ends = await consumer.end_offsets(partitions)
    for tp in partitions:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


async def _partitions_when_present(
    bootstrap_servers: KafkaAccess | str, topic: str
) -> list[TopicPartition]:
    """The topic's partitions, waiting (and saying so) until the topic exists."""
    waiting = False
    while True:
        try:
            found = await topic_partitions(bootstrap_servers, topic)
        except Exception as exc:  # the broker may be restarting
            found = []
            logger.debug("suppression list: cannot read topic metadata: %s", exc)
        if found:
            if waiting:
                logger.info("suppression list: topic %s is there now", topic)
            return [TopicPartition(topic, p) for p in found]
        if not waiting:
            logger.warning(
                "suppression list: topic %s does not exist yet; waiting for it (no sends until"
                " the list has been read)",
                topic,
            )
            waiting = True
        await asyncio.sleep(RETRY_SECONDS)


class GlobalSuppressionList:
    """This worker's copy of the suppression list, kept current in the background.

    ``ready`` is set once the whole topic has been read; ``get`` answers from the local
    store at any time after ``start``, but only after ``ready`` does it know every entry.
    ``ready`` is cleared again by ``stop``, and while the copy is read anew after the
    broker lost its data.
    """

    def __init__(self, bootstrap_servers: KafkaAccess | str, topic: str, path: Path) -> None:
        self.access = KafkaAccess.plain(bootstrap_servers)
        self.bootstrap_servers = self.access.bootstrap_servers
        self.topic = topic
        self.path = Path(path)
        self.ready = asyncio.Event()
        self._options = rocksdict.Options(raw_mode=True)
        self._db: rocksdict.Rdict | None = None
        self._count = 0
        self._next: dict[int, int] = {}  # partition -> next offset applied to the store
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return self._count

    def get(self, address: str) -> Suppression | None:
        """The entry for ``address`` (in any case, untrimmed), or None."""
        if self._db is None:
            raise RuntimeError("the suppression list is not started (or was stopped)")
        key = normalise_address(address)
        if key is None:
            return None
        raw = self._db.get(key.encode())
        return None if raw is None else Suppression.decode(raw)

    async def start(self) -> None:
        self._open()
        consumer = AIOKafkaConsumer(
            **self.access.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        try:
            await start_client(consumer)
        except Exception as exc:
            self._close()
            raise BrokerError(
                f"suppression list: cannot reach the broker at {self.bootstrap_servers}: {exc}"
            ) from exc
        except BaseException:  # stopped while starting
            self._close()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name="suppression-list")

    async def stop(self) -> None:
        self.ready.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        self._close()

    # The store.

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        db = rocksdict.Rdict(str(self.path), self._options)
        self._db = db
        count = db.get(COUNT_KEY)
        self._count = int(count) if count is not None else 0
        self._next = {}
        for key, value in db.items(from_key=PROGRESS_PREFIX):
            if not isinstance(key, bytes) or not key.startswith(PROGRESS_PREFIX):
                break
            self._next[int(key[len(PROGRESS_PREFIX) :])] = _progress(value)[0]
        SUPPRESSION_LIST_SIZE.set(self._count)
        logger.info(
            "suppression list: %d addresses in the local store at %s", self._count, self.path
        )

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _clear(self) -> None:
        self._close()
        rocksdict.Rdict.destroy(str(self.path), self._options)
        shutil.rmtree(self.path, ignore_errors=True)
        self._open()

    def _stored_digest(self, partition: int) -> int | None:
        assert self._db is not None
        value = self._db.get(_progress_key(partition))
        return _progress(value)[1] if value is not None else None

    def _apply(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Fold a batch of records into the store in one atomic write."""
        db = self._db
        assert db is not None
        write = rocksdict.WriteBatch(raw_mode=True)
        present: dict[bytes, bool] = {}  # addresses this batch touched -> held after it
        count = self._count
        for tp, records in batch.items():
            for record in records:
                decoded = decode_record(record)
                if decoded is None:
                    continue
                key, entry = decoded
                held = present[key] if key in present else db.get(key) is not None
                if entry is None:
                    write.delete(key)
                    count -= 1 if held else 0
                else:
                    write.put(key, entry.encode())
                    count += 0 if held else 1
                present[key] = entry is not None
            last = records[-1]
            write.put(_progress_key(tp.partition), b"%d:%d" % (last.offset + 1, _digest(last)))
        write.put(COUNT_KEY, str(count).encode())
        db.write(write)
        self._count = count
        for tp, records in batch.items():
            self._next[tp.partition] = records[-1].offset + 1
        SUPPRESSION_LIST_SIZE.set(count)

    # The consumer.

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        started = time.monotonic()
        partitions = await self._resume(consumer)
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=POLL_MS)
                if batch and self._went_back(batch):
                    self._clear()
                    self.ready.clear()
                    self._seek(consumer, partitions)
                    continue
                if batch:
                    self._apply(batch)
                elif not self.ready.is_set() and await caught_up(consumer, partitions):
                    batch = await consumer.getmany(timeout_ms=POLL_MS)
                    if batch:
                        self._apply(batch)
                        continue
                    self.ready.set()
                    logger.info(
                        "suppression list: caught up with %s, %d addresses, in %.1fs",
                        self.topic,
                        self._count,
                        time.monotonic() - started,
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("suppression list: reading %s failed; retrying", self.topic)
                await asyncio.sleep(RETRY_SECONDS)
                # Go on from what the store holds, not from what the consumer fetched.
                self._seek(consumer, partitions)

    async def _resume(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """Assign every partition and seek each to the store's offset (or the beginning)."""
        while True:
            try:
                partitions = await _partitions_when_present(self.access, self.topic)
                consumer.assign(partitions)
                if not await self._still_there(consumer, partitions):
                    self._clear()
                self._seek(consumer, partitions)
                return partitions
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("suppression list: cannot resume reading %s; retrying", self.topic)
                await asyncio.sleep(RETRY_SECONDS)

    def _seek(self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            consumer.seek(tp, self._next.get(tp.partition, 0))

    def _went_back(self, batch: dict[TopicPartition, list[Any]]) -> bool:
        """Records below what the store already holds: the log was reset under us."""
        for tp, records in batch.items():
            applied = self._next.get(tp.partition, 0)
            if records[0].offset < applied:
                logger.warning(
                    "suppression list: %s[%d] restarted at offset %d below the %d already read;"
                    " the broker lost its data: clearing the local copy and reading it again",
                    tp.topic,
                    tp.partition,
                    records[0].offset,
                    applied,
                )
                return True
        return False

    async def _still_there(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> bool:
        """Whether the topic still holds the record each stored offset follows.

        A stored offset past the end means the broker lost its data (an embedded broker
        restarted with memory storage). tansu understates the end of multi-record
        batches, so an offset past the reported end is confirmed by reading the record
        before it, which must be the one applied last (or compacted away).
        """
        ends = await consumer.end_offsets(partitions)
        probes = {
            tp: self._next[tp.partition]
            for tp in partitions
            if self._next.get(tp.partition, 0) > ends[tp]
        }
        for tp, offset in probes.items():
            consumer.seek(tp, offset - 1)
        found: dict[TopicPartition, Any] = {}
        deadline = time.monotonic() + PROBE_SECONDS
        while len(found) < len(probes) and time.monotonic() < deadline:
            waiting = [tp for tp in probes if tp not in found]
            batch = await consumer.getmany(*waiting, timeout_ms=POLL_MS)
            for tp, records in batch.items():
                found.setdefault(tp, records[0])
        for tp, offset in probes.items():
            record = found.get(tp)
            if (
                record is None
                or record.offset < offset - 1
                or (
                    record.offset == offset - 1
                    and _digest(record) != self._stored_digest(tp.partition)
                )
            ):
                logger.warning(
                    "suppression list: %s[%d] ends at %d, before the stored offset %d: the"
                    " broker lost its data; clearing the local copy and reading it again",
                    tp.topic,
                    tp.partition,
                    ends[tp],
                    offset,
                )
                return False
        return True


async def publish(config: Config, changes: list[tuple[str, Suppression | None]]) -> int:
    """Add (an entry) or remove (None) addresses; returns once the broker has them all."""
    keyed = []
    for address, entry in changes:
        normalised = normalise_address(address)
        if normalised is None:
            raise MailstreamError(f'"{address}" is not an email address')
        keyed.append((normalised.encode(), entry.encode() if entry is not None else None))
    return await produce_keyed(config, config.topics.suppression, keyed)


async def read_all(config: Config, idle: float = 1.0) -> dict[str, Suppression]:
    """The whole list, read from the topic's beginning (empty if there is no topic yet)."""
    topic = config.topics.suppression
    access = kafka_access(config)
    try:
        found = await topic_partitions(access, topic)
    except Exception as exc:
        raise BrokerError(f"cannot reach the broker at {config.bootstrap_servers}: {exc}") from exc
    if not found:
        return {}
    partitions = [TopicPartition(topic, p) for p in found]
    consumer = AIOKafkaConsumer(
        **access.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await start_client(consumer)
    entries: dict[bytes, Suppression | None] = {}
    confirm_ms = int(idle * 1000)
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while True:
            batch = await consumer.getmany(timeout_ms=min(POLL_MS, confirm_ms))
            if not batch and await caught_up(consumer, partitions):
                batch = await consumer.getmany(timeout_ms=confirm_ms)
                if not batch:
                    break
            for records in batch.values():
                for record in records:
                    decoded = decode_record(record)
                    if decoded is not None:
                        entries[decoded[0]] = decoded[1]
    finally:
        await consumer.stop()
    return {k.decode(): v for k, v in entries.items() if v is not None}
