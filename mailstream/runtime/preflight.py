"""What a worker (and the demo) checks before it starts: its web port is free, no other
worker holds its data directory, and the broker still has what its local state was
built from. Each failure is one line saying what and what to do."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from mailstream.exceptions import MailstreamError
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.broker_watch import Partition, ahead_of_broker, data_lost_line
from mailstream.kafka.clients import start_client

LOCK_FILE = "worker.lock"
# Faust's offset of the last changelog record applied, in each table partition's RocksDB
OFFSET_KEY = b"__faust\x00offset__"
_STORE = re.compile(r"^(?P<table>.+)-(?P<partition>\d+)\.db$")

# held for the life of the process (closing it would release the lock)
_held: list[IO[str]] = []


class PortInUse(MailstreamError):
    """Something already listens on the port a worker or the demo would use."""


class DataDirLocked(MailstreamError):
    """Another worker holds the data directory."""


class BrokerDataLost(MailstreamError):
    """The broker holds less than the local state was built from."""


def check_port_free(host: str, port: int, key: str, how: str) -> None:
    """Raise ``PortInUse`` naming ``key`` when ``host:port`` cannot be listened on; ``how``
    says how to choose another port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # as aiohttp listens: a port left in TIME_WAIT by a worker just stopped is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"{key}: port {port} on {host} is already in use (another worker or"
                    f" program listens there); stop it, or choose another port ({how})"
                ) from None
            raise PortInUse(f"{key}: cannot listen on {host}:{port}: {exc.strerror}") from None


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir`` for this process, or raise ``DataDirLocked`` saying who has it.
    The lock lasts until the process ends, or the returned file is closed.

    RocksDB admits one process per store; without this, a second worker on the same
    directory would fail later, in the middle of starting, for a reason it cannot tell."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - kept open while the process lives
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise DataDirLocked(
            f"data_dir: another worker (pid {holder}) is using {data_dir}; each worker on"
            " a host needs its own data directory (--data-dir or MAILSTREAM_DATA_DIR),"
            " or stop that worker first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held.append(handle)
    return handle


def persisted_offsets(data_dir: Path, app_id: str) -> dict[Partition, int]:
    """(changelog topic, partition) -> the offset of the last changelog record each
    table partition in ``data_dir`` applied (those with one)."""
    from rocksdict import AccessType, Options, Rdict

    tables = data_dir / "v1" / "tables"
    found: dict[Partition, int] = {}
    if not tables.is_dir():
        return found
    for store in sorted(tables.iterdir()):
        m = _STORE.match(store.name)
        if m is None or not store.is_dir():
            continue
        db = Rdict(str(store), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            raw = db.get(OFFSET_KEY)
        finally:
            db.close()
        if raw is not None:
            topic = f"{app_id}-{m['table']}-changelog"
            found[(topic, int(m["partition"]))] = int(raw)
    return found


async def end_offsets(
    servers: KafkaAccess | str, partitions: Iterable[Partition], embedded: bool
) -> dict[Partition, int | None]:
    """Each partition's end offset on the broker (None: its topic is gone)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from mailstream.kafka.embedded_quirks import corrected_end_offsets

    wanted = sorted(set(partitions))
    consumer = AIOKafkaConsumer(
        **KafkaAccess.plain(servers).client_kwargs(), enable_auto_commit=False
    )
    await start_client(consumer)
    try:
        present = await consumer.topics()
        tps = [TopicPartition(t, p) for t, p in wanted if t in present]
        ends: dict[Any, int] = dict(await consumer.end_offsets(tps)) if tps else {}
    finally:
        await consumer.stop()
    ends = await corrected_end_offsets(servers, ends, embedded=embedded)
    found: dict[Partition, int | None] = {tp: None for tp in wanted}
    for tp, end in ends.items():
        found[(tp.topic, tp.partition)] = end
    return found


async def broker_data_problem(
    servers: KafkaAccess | str, data_dir: Path, persisted: dict[Partition, int], embedded: bool
) -> str | None:
    """The line explaining that the broker lost what ``persisted`` was built from, or
    None when it has all of it."""
    if not persisted:
        return None
    ends = await end_offsets(servers, persisted, embedded)
    behind = ahead_of_broker(persisted, ends)
    return data_lost_line(str(servers), data_dir, behind) if behind else None


async def check_local_state(
    servers: KafkaAccess | str, data_dir: Path, app_id: str, embedded: bool
) -> None:
    """Raise ``BrokerDataLost`` when the broker holds less than the local state in
    ``data_dir`` was built from (a memory-only broker restarted, say)."""
    why = await broker_data_problem(
        servers, data_dir, persisted_offsets(data_dir, app_id), embedded
    )
    if why is not None:
        raise BrokerDataLost(why)
