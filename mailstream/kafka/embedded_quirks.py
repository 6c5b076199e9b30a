"""The embedded broker's (tansu 0.6) quirks and their workarounds, on only for that broker.

Two things tansu does unlike Apache Kafka:

- It answers ListOffsets(latest) with the base offset of a partition's last record batch
  plus one, short of the end whenever that batch holds several records; the high-water
  mark in a Fetch response is right. So on the embedded broker end offsets come from a
  fetch (``fetched_end_offsets``): in Faust's table recovery (``install``), the dashboard's
  lag and the preflight (``corrected_end_offsets``). Nothing in mailstream reads "until a
  fetch comes back empty" any more: the direct readers read on from the stored position
  and never need an end.
- It holds an empty fetch for the whole fetch_max_wait even when data arrives, where
  Kafka answers at once. So fetches wait briefly on the embedded broker
  (``fetch_max_wait``), and Faust's consumer, which asks for a fixed 1.5 s, is made to
  wait as long (``install``).
- It lacks InitProducerId, so it cannot take an idempotent producer: a producer that was
  not told asks first (``idempotence_supported``).

The rest of mailstream calls the functions here and never checks ``broker.embedded`` for
a workaround. When tansu answers ListOffsets and fetches as Kafka does, this module goes.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError
from mailstream.kafka.access import KafkaAccess, kafka_access
from mailstream.kafka.clients import start_client

# tansu holds an empty fetch for its whole wait even when data arrives: each hop from a
# topic to an agent waits up to this long on the embedded broker.
EMBEDDED_FETCH_WAIT = 0.02
# ... for the fetches no event waits on to become a send (feedback, webhook calls, send
# commands another worker wrote): an idle consumer polls this often, not every 20 ms.
EMBEDDED_SIDE_FETCH_WAIT = 0.2

# The cluster id tansu reports (its default; mailstream starts it with no other).
EMBEDDED_CLUSTER_ID = "tansu_cluster"


def install(config: Config) -> None:
    """Switch on what the configured broker needs, once per process, when the app is built.

    On the embedded broker: Faust's table recovery reads each changelog to the end a fetch
    reports. On any broker: Faust's
    consumer waits ``fetch_max_wait(config, send_path=False)`` for data in a fetch, when
    that is not the client's default: the direct readers read the events and send topics,
    so Faust's own consumer carries no event on its way to a send (only feedback, claims
    and webhook commands). Under exactly_once (Apache Kafka only), Faust's consumer reads
    committed records only, its table recovery too (mailstream.kafka.transactions)."""
    _restore()  # an app built before in this process (the tests) leaves no patch behind
    if config.broker.embedded:
        correct_recovery_highwaters(kafka_access(config))
    if config.exactly_once:
        recover_to_committed_ends(kafka_access(config))
    wait = fetch_max_wait(config, send_path=False)
    if wait is not None or config.exactly_once:
        set_fetch_max_wait(wait, read_committed=config.exactly_once)


# Faust's own methods that the patches below replace, as they were before the first.
_FAUST_ORIGINALS: dict[str, Any] = {}


def _faust_original(name: str) -> Any:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if name not in _FAUST_ORIGINALS:
        _FAUST_ORIGINALS[name] = getattr(AIOKafkaConsumerThread, name)
    return _FAUST_ORIGINALS[name]


def _restore() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    for name, original in _FAUST_ORIGINALS.items():
        setattr(AIOKafkaConsumerThread, name, original)


def fetch_max_wait(config: Config, send_path: bool = True) -> float | None:
    """How long a fetch may wait for data (None: the client's default). tansu holds an
    empty fetch for all of it even when data arrives, so on the embedded broker it is
    short for a fetch on the way from an event to its send (``send_path``); the others
    wait longer, as every idle consumer polls the broker once per wait. A configured
    ``broker.fetch_max_wait`` applies to every fetch, on any broker."""
    if config.broker.fetch_max_wait is None and config.broker.embedded:
        return EMBEDDED_FETCH_WAIT if send_path else EMBEDDED_SIDE_FETCH_WAIT
    return config.broker.fetch_max_wait


async def corrected_end_offsets(
    bootstrap_servers: KafkaAccess | str,
    listed: dict[Any, int],
    *,
    embedded: bool,
    timeout: float = 10.0,
) -> dict[Any, int]:
    """The end offsets of the partitions in ``listed`` (partition -> its ListOffsets
    answer): as listed, or on the embedded broker as a fetch reports them."""
    if not embedded or not listed:
        return listed
    return await fetched_end_offsets(bootstrap_servers, listed, timeout)


async def fetched_end_offsets(
    bootstrap_servers: KafkaAccess | str, listed: dict[Any, int], timeout: float = 10.0
) -> dict[Any, int]:
    """The end offsets of the partitions in ``listed`` (partition -> its ListOffsets
    answer), as a fetch reports them.

    tansu 0.6 answers ListOffsets(latest) with the base offset of the partition's last
    record batch + 1, short of the end whenever that batch holds several records; the
    high-water mark in a Fetch response is right. So each partition with records is
    fetched once from just before its listed end. Raises BrokerError when a partition's
    fetch does not answer within ``timeout``: a recovery that stopped at a short end
    would lose the records after it."""
    probed = {TopicPartition(tp.topic, tp.partition): tp for tp, end in listed.items() if end}
    if not probed:
        return dict(listed)
    consumer = AIOKafkaConsumer(
        **KafkaAccess.plain(bootstrap_servers).client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    await start_client(consumer)
    try:
        consumer.assign(list(probed))
        for tp in probed:
            consumer.seek(tp, listed[probed[tp]] - 1)
        ends = dict(listed)
        pending = set(probed)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            await consumer.getmany(*pending, timeout_ms=100)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[probed[tp]] = max(highwater, listed[probed[tp]])
                    pending.discard(tp)
        if pending:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending))
            raise BrokerError(f"could not read the end offsets of {names} within {timeout:.0f}s")
        return ends
    finally:
        await consumer.stop()


# The patches of Faust's aiokafka driver (faust-streaming 0.15). Each replaces a method
# of AIOKafkaConsumerThread, for the whole process.


def set_fetch_max_wait(seconds: float | None, read_committed: bool = False) -> None:
    """Make Faust's consumers wait at most ``seconds`` for data in a fetch (None: as
    Faust asks), and with ``read_committed`` read committed records only (Faust does that
    only under its own exactly_once, which mailstream does not use).

    Faust creates its consumer with a fixed fetch_max_wait_ms of 1.5 s. Kafka answers a
    fetch as soon as data arrives, but tansu waits out the full time, which adds up to
    that much to each hop from topic to agent. This patch can go when Faust lets its
    consumer's fetch_max_wait_ms be set, or when the embedded broker answers a fetch as
    soon as data arrives (then ``broker.fetch_max_wait`` would need Faust's setting)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = _faust_original("_create_worker_consumer")

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        # both read when the consumer starts
        if seconds is not None:
            consumer._fetch_max_wait_ms = int(seconds * 1000)
        if read_committed:
            consumer._isolation_level = "read_committed"
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def correct_recovery_highwaters(bootstrap_servers: KafkaAccess | str) -> None:
    """Make Faust's table recovery read each changelog partition to its real end on the
    embedded broker (``fetched_end_offsets``): it reads up to the end offsets that
    ListOffsets answers, which tansu reports short, and would miss a changelog's tail.

    Never needed on Apache Kafka. This patch can go when the embedded broker answers
    ListOffsets(latest) with the offset after the last record."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    listed_highwaters = _faust_original("_highwaters")

    async def _highwaters(self: Any, partitions: Any) -> Any:
        listed = await listed_highwaters(self, partitions)
        if self.consumer.in_transaction:
            return listed
        return await fetched_end_offsets(bootstrap_servers, dict(listed))

    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]


def recover_to_committed_ends(access: KafkaAccess) -> None:
    """Make Faust's table recovery, reading committed records only (exactly_once), stop at
    each changelog partition's last committed record rather than wait for a transaction
    marker it never sees (mailstream.kafka.transactions.committed_ends)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from mailstream.kafka.transactions import committed_ends

    listed_highwaters = _faust_original("_highwaters")

    async def _highwaters(self: Any, partitions: Any) -> Any:
        return await committed_ends(access, dict(await listed_highwaters(self, partitions)))

    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]


async def idempotence_supported(bootstrap_servers: KafkaAccess | str) -> bool:
    """Whether the broker can take an idempotent producer: not the embedded one, which
    answers InitProducerId with an unknown error (found by its cluster id)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        **KafkaAccess.plain(bootstrap_servers).client_kwargs(), request_timeout_ms=10_000
    )
    await start_client(admin)
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return bool(cluster.get("cluster_id") != EMBEDDED_CLUSTER_ID)
