"""Whether the broker still answers this worker, and whether it still has the data the
worker's local state was built from.

The core (``BrokerContact``, ``ahead_of_broker`` and the lines they explain themselves
with) takes the time as an argument; ``watch_broker`` is the worker's task that asks the
broker for its metadata every second and acts on what the core decides.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaClient

from mailstream.kafka.access import KafkaAccess

logger = logging.getLogger(__name__)

# How often the worker asks the broker for its metadata (one small request, whatever
# the load), and how long it waits for the answer.
PROBE_EVERY = 1.0
PROBE_TIMEOUT = 2.0
# With no answer for this long, /health reports the worker not ready.
STALE_AFTER = 3.0
# Exit codes: the broker stayed away (a supervisor may start the worker again), and the
# broker lost the data the local state was built from (starting again will not help).
EXIT_BROKER_LOST = 1
EXIT_BROKER_DATA_LOST = 2

# (changelog topic, partition)
Partition = tuple[str, int]


@dataclass
class BrokerContact:
    """When the broker last answered: ``answered`` with the monotonic and the wall-clock
    time of each answer; the questions take the monotonic time."""

    # monotonic; infinity until the watch starts (reachable: nothing says otherwise yet)
    last_ok: float = math.inf
    last_ok_wall: float = 0.0  # epoch seconds, for the messages
    stale_after: float = STALE_AFTER
    lost_after: float = 60.0
    # an answer came after a question went unanswered: the broker may have restarted
    came_back: bool = False
    _missed: bool = False

    def answered(self, now: float, wall: float) -> None:
        if self._missed or not self.reachable(now):
            self.came_back = True
        self._missed = False
        self.last_ok, self.last_ok_wall = now, wall

    def missed(self) -> None:
        """A question went unanswered (refused, failed or timed out)."""
        self._missed = True

    def silent_for(self, now: float) -> float:
        return max(0.0, now - self.last_ok)

    def reachable(self, now: float) -> bool:
        return self.silent_for(now) <= self.stale_after

    def lost(self, now: float) -> bool:
        return self.silent_for(now) >= self.lost_after

    def status(self, now: float) -> str:
        """``ok``, or ``unreachable since <UTC time>`` (for /health)."""
        if self.reachable(now):
            return "ok"
        return f"unreachable since {_utc(self.last_ok_wall)}"


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def lost_line(servers: str, contact: BrokerContact, now: float) -> str:
    """Why a worker whose broker stayed away stops."""
    return (
        f"the broker at {servers} has not answered for {contact.silent_for(now):.0f} s"
        f" (since {_utc(contact.last_ok_wall)}; broker.lost_after is"
        f" {contact.lost_after:.0f} s): stopping; start the worker again once the broker"
        " is reachable"
    )


def ahead_of_broker(
    persisted: Mapping[Partition, int], ends: Mapping[Partition, int | None]
) -> list[tuple[Partition, int, int | None]]:
    """The changelog partitions whose local copy holds more than the broker does:
    (partition, the last offset applied locally, the broker's end offset or None when the
    topic is gone). Faust stores the offset of the last record it applied, so a partition
    is behind when its end offset is not past it."""
    behind = []
    for tp, offset in sorted(persisted.items()):
        end = ends.get(tp)
        if end is None or offset >= end:
            behind.append((tp, offset, end))
    return behind


def data_lost_line(
    servers: str, data_dir: object, behind: list[tuple[Partition, int, int | None]]
) -> str:
    """Why a worker refuses the local state it has, and what to do, in one line."""
    (topic, partition), offset, end = behind[0]
    where = (
        f"{topic} is gone"
        if end is None
        else f"{topic}[{partition}] ends at offset {end}, the local copy has offset {offset}"
    )
    more = f"; {len(behind)} changelog partitions behind in all" if len(behind) > 1 else ""
    return data_lost_advice(servers, data_dir, where + more)


_FAUST_BEHIND = re.compile(
    r"TP\(topic='(?P<topic>[^']+)', partition=(?P<partition>\d+)\).*"
    r"\((?P<offset>-?\d+) > (?P<highwater>-?\d+)\)",
    re.S,
)


def consistency_error_where(message: str) -> str:
    """Which partition Faust's ConsistencyError names, said as ``data_lost_line`` does."""
    m = _FAUST_BEHIND.search(message)
    if m is None:
        return " ".join(message.split("\n\n")[0].split())
    end = int(m["highwater"]) + 1  # Faust compares with the offset of the last record
    return (
        f"{m['topic']}[{m['partition']}] ends at offset {end}, the local copy has"
        f" offset {m['offset']}"
    )


def data_lost_advice(servers: str, data_dir: object, where: str) -> str:
    return (
        f"the broker at {servers} lost its data ({where}): the local state in"
        f" {data_dir} is ahead of it. Remove {data_dir} to start from what the broker"
        " holds (the users, suppressions and send records only this copy kept are then"
        " forgotten), or restore the broker's data and start the worker again"
    )


class DataLostTraceback(logging.Filter):
    """Leaves out Faust's traceback for the ConsistencyError its table recovery raises
    when a changelog ends before the local copy: the worker says what happened, and what
    to do, in one line instead (mailstream.cli.main)."""

    def __init__(self) -> None:
        super().__init__()
        from faust.exceptions import ConsistencyError

        self.error = ConsistencyError

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.error):
            return False
        return not any(isinstance(arg, self.error) for arg in _args(record))


def _args(record: logging.LogRecord) -> tuple[object, ...]:
    args = record.args
    return args if isinstance(args, tuple) else ()


async def _probe(client: AIOKafkaClient) -> set[str]:
    """One metadata round trip; the topics the broker lists."""
    cluster = await asyncio.wait_for(client.fetch_all_metadata(), PROBE_TIMEOUT)
    return set(cluster.topics())


def _exit(code: int) -> None:
    # The broker is gone or no longer holds the worker's data: nothing more can be made
    # durable, and a graceful stop would wait on it. What is durable stays so, as after
    # any crash the worker is built to survive.
    logging.shutdown()
    os._exit(code)


async def watch_broker(
    servers: KafkaAccess | str,
    contact: BrokerContact,
    check_data: Callable[[], Awaitable[str | None]],
    expected_topics: Iterable[str],
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    exit: Callable[[int], None] = _exit,
) -> None:
    """Forever: ask the broker for its metadata, note each answer in ``contact``, and
    stop the worker when the broker has stayed away ``lost_after``, when a topic the
    worker uses is gone, or when the broker came back behind the local state
    (``check_data`` returns the line that explains it, else None)."""
    expected = set(expected_topics)
    # silence counts from now: the worker reached the broker on its way here
    contact.last_ok, contact.last_ok_wall = clock(), wall()
    client: AIOKafkaClient | None = None
    warned = False
    try:
        while True:
            try:
                if client is None:
                    client = AIOKafkaClient(
                        **KafkaAccess.plain(servers).client_kwargs(),
                        request_timeout_ms=int(PROBE_TIMEOUT * 1000),
                    )
                    try:
                        await asyncio.wait_for(client.bootstrap(), PROBE_TIMEOUT)
                    except BaseException:
                        await client.close()
                        client = None
                        raise
                topics = await _probe(client)
            except Exception as exc:  # unreachable, refused, timed out
                logger.debug("broker probe failed: %r", exc)
                contact.missed()
            else:
                contact.answered(clock(), wall())
                warned = False
                gone = sorted(expected - topics)
                if gone or contact.came_back:
                    contact.came_back = False
                    try:
                        why = await check_data()
                    except Exception as exc:  # gone again: ask once it answers
                        logger.debug("checking the broker's data failed: %r", exc)
                        contact.came_back = True
                        await asyncio.sleep(PROBE_EVERY)
                        continue
                    if why is None and gone:
                        why = (
                            f"the broker at {servers} no longer has the topic(s)"
                            f" {', '.join(gone)}: it lost its data; restore it, or create"
                            " the topics again and remove the worker's data directory"
                        )
                    if why is not None:
                        logger.critical(why)
                        exit(EXIT_BROKER_DATA_LOST)
                        return
                    logger.warning("the broker at %s answers again", servers)
            now = clock()
            if contact.lost(now):
                logger.critical(lost_line(str(servers), contact, now))
                exit(EXIT_BROKER_LOST)
                return
            if not contact.reachable(now) and not warned:
                warned = True
                logger.error(
                    "the broker at %s does not answer (%s): /health reports not ready, and"
                    " the worker stops if it is still away after %.0f s (broker.lost_after)",
                    servers,
                    contact.status(now),
                    contact.lost_after,
                )
            await asyncio.sleep(PROBE_EVERY)
    finally:
        if client is not None:
            await client.close()
