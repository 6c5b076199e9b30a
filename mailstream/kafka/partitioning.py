"""The one partitioner: which partition of a topic a key's messages belong in.

A user's events, user record, send commands, delivery records and feedback must share a
partition number, or the user's state splits in two. Producers differ (confluent-kafka
and librdkafka default to CRC32, the Java client and aiokafka to murmur2), so the engine
never leaves the choice to a client's default: every keyed message it writes names its
partition from ``partition_for``, which is murmur2 exactly as Kafka's Java client and
aiokafka compute it. Ingest moves an event that arrives elsewhere (mailstream.core.ingest_batch).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiokafka.partitioner import murmur2


# murmur2 is pure Python, 2 to 6 µs a key (ingest checks every event's); a user's events
# come in runs, and a hit costs 0.06 µs. 4,096 keys hold about a megabyte.
@lru_cache(maxsize=4096)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: Java's
    ``toPositive(murmur2(key)) % partitions``, as aiokafka's DefaultPartitioner."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def partition_count(producer: Any, topic: str) -> int | None:
    """How many partitions ``topic`` has, from a producer's metadata (fetched from the
    broker on first use, then cached by the client). ``producer`` is an aiokafka
    producer or Faust's, which wraps one; None for one that keeps no metadata."""
    ensure = getattr(producer, "_ensure_producer", None)
    inner = ensure() if ensure is not None else producer
    partitions_for = getattr(inner, "partitions_for", None)
    if partitions_for is None:
        return None
    return len(await partitions_for(topic))


async def keyed_partition(producer: Any, topic: str, key: bytes | None) -> int | None:
    """The partition to send ``key`` to in ``topic`` (None: no key, or a producer without
    metadata; the client then chooses)."""
    if key is None:
        return None
    count = await partition_count(producer, topic)
    return None if count is None else partition_for(key, count)


def misplaced(key: bytes | None, partition: int, partitions: int | None) -> str | None:
    """Why a message keyed ``key``, found in ``partition`` of a topic of ``partitions``,
    is not where the engine writes it (None: it is, or there is nothing to tell).

    What is remembered of a user's commands (send ids, webhook ids) lives in the
    partition of the user's key: a copy of a command moved to another partition would
    meet none of it there, and be carried out a second time."""
    if key is None or partitions is None:
        return None
    home = partition_for(key, partitions)
    if home == partition:
        return None
    return (
        f"found in partition {partition}, not in its key's partition {home}: workers write"
        " each command to its user's partition, where its id is remembered"
    )
