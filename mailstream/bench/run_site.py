"""Where a bench run happens: the broker it uses, the names it gives things there, and
the worker processes it starts and stops."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient

from mailstream.config.kafka_sections import SecurityConfig, TopicsConfig
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.embedded_broker import EmbeddedBroker, free_port
from mailstream.kafka.topics import COMPACTED, broker_default_replication, ensure_topics


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop processes the bench started, by pid: politely, then not."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class ExistingBroker:
    """A Kafka cluster the bench uses but did not start (``--broker``): there is no
    process of it to measure, and nothing to stop."""

    process: subprocess.Popen[bytes] | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        self.bootstrap_servers = url.removeprefix("kafka://")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def topic_names(name: str) -> dict[str, str]:
    """The worker config's ``topics`` for an app of the bench named ``name``: each of
    the config's topics, under ``name`` instead of ``mailstream``."""
    names = {}
    for key, spec in TopicsConfig.model_fields.items():
        if isinstance(spec.default, str):
            names[key] = name + spec.default.removeprefix("mailstream")
    return names


class Site:
    """The broker a run uses, and what it calls things there.

    On an existing broker (``broker_url``) every topic, app id and consumer group of the
    run carries the run's own suffix: the topics of an earlier run, and the changelogs
    its workers wrote, would otherwise be read as this run's (and a production cluster's
    ``mailstream.events`` is nobody's bench)."""

    def __init__(
        self, root: Path, broker_url: str | None = None, security: SecurityConfig | None = None
    ) -> None:
        self.root = root
        self.broker: EmbeddedBroker | ExistingBroker = (
            ExistingBroker(broker_url)
            if broker_url
            else EmbeddedBroker("127.0.0.1", free_port(), log_path=root / "broker.log")
        )
        self.embedded = broker_url is None
        # how the bench and its workers connect to an existing cluster (the config's
        # broker.security, the password from the variable it names)
        self.security = security if security is not None and broker_url else SecurityConfig()
        self.kafka = KafkaAccess.from_settings(self.broker.bootstrap_servers, self.security)
        self.suffix = "" if self.embedded else f"-{secrets.token_hex(3)}"
        self._replication: int | None = None
        # the run's workers share it, and what the bench writes to their topics is signed with it
        self.cluster_secret = secrets.token_urlsafe(32)

    @property
    def described(self) -> str:
        """The broker, as the figures name it."""
        if self.embedded:
            return "embedded (tansu), producer batching"
        return f"{self.broker.url} (not started here: its CPU is not measured)"

    def apart(self, name: str) -> str:
        """``name`` as this run uses it on the broker."""
        return name + self.suffix

    def broker_config(self) -> dict[str, Any]:
        """The worker config's ``broker``: short timeouts, so a phase starts quickly; on
        Apache Kafka the shortest session its group.min.session.timeout.ms allows (6 s by
        default: it refuses a JoinGroup asking for less)."""
        session = "3s" if self.embedded else "6s"
        return {
            "url": self.broker.url,
            "embedded": self.embedded,
            "session_timeout": session,
            "heartbeat_interval": "500ms",
            "rebalance_timeout": "3s",
            "security": self.security.model_dump(mode="json", exclude_defaults=True),
        }

    async def topics(
        self, name: str, partitions: int = 4, events_from: str | None = None
    ) -> dict[str, str]:
        """Topics of their own for the workers of app ``name``; they read the events of
        ``events_from`` if given (as an app of their own, from its start)."""
        topics = topic_names(self.apart(name))
        if events_from is not None:
            topics["events"] = events_from
        # the suppression list compacted, or its workers refuse the topic at start
        compacted = {topics["suppression"]: COMPACTED}
        await ensure_topics(
            self.kafka,
            topics.values(),
            partitions,
            await self.replication(),
            topic_configs=compacted,
        )
        return topics

    async def replication(self) -> int:
        """The topics' replication: on Apache Kafka the brokers' default, as a worker
        creates them (on a 3-node cluster every write then waits for its replicas)."""
        if self._replication is None:
            found = None if self.embedded else await broker_default_replication(self.kafka)
            self._replication = found or 1
        return self._replication

    async def events_topic(self, name: str, partitions: int = 4) -> str:
        """Only the events topic of app ``name``: for events that apps of other names
        read (``topics(..., events_from=...)``)."""
        topic = topic_names(self.apart(name))["events"]
        await ensure_topics(self.kafka, [topic], partitions, await self.replication())
        return topic

    def spawn_worker(
        self, label: str, config: dict[str, Any], port: int, **env: str
    ) -> subprocess.Popen[bytes]:
        """Start a worker with ``config`` and web port ``port``; its config file, data
        directory and log are the run's ``label``.yaml, ``label`` and ``label``.log.
        ``env`` adds to the environment, of which no ``MAILSTREAM_`` setting is passed on
        (the bench's workers are configured here, not by whoever ran the bench)."""
        path = self.root / f"{label}.yaml"
        path.write_text(yaml.safe_dump(config))
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
        worker_env.update(
            MAILSTREAM_CONFIG=str(path),
            MAILSTREAM_WEB_PORT=str(port),
            MAILSTREAM_DATA_DIR=str(self.root / label),
            MAILSTREAM_UNSUBSCRIBE_SECRET=secrets.token_urlsafe(24),
            MAILSTREAM_ADMIN_TOKEN=secrets.token_urlsafe(18),
            MAILSTREAM_CLUSTER_SECRET=self.cluster_secret,
            **env,
        )
        with open(self.root / f"{label}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "mailstream", "worker"],
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def close(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """End the run: stop ``procs`` and the broker, remove the run's files
        (``clean_up``), and delete what it created on an existing broker."""
        clean_up(procs, self.broker, self.root)
        await self.delete_topics()

    async def delete_topics(self) -> None:
        """On an existing broker, delete what this run created there: its topics and its
        workers' changelogs (every name carrying the run's suffix)."""
        if self.embedded:
            return
        admin = AIOKafkaAdminClient(**self.kafka.client_kwargs())
        try:
            await admin.start()
            names = [t for t in await admin.list_topics() if self.suffix in t]
            if names:
                await admin.delete_topics(names)
        except Exception as exc:  # the figures are already written; say what is left
            print(f"could not delete this run's topics ({self.suffix}): {exc!r}", flush=True)
        finally:
            await admin.close()


def clean_up(
    procs: list[subprocess.Popen[bytes]], broker: EmbeddedBroker | ExistingBroker, root: Path
) -> None:
    """Stop every process the bench started, then the broker; remove its files, unless
    MAILSTREAM_BENCH_KEEP is set (their logs are then left in ``root``)."""
    stop_processes(procs)
    broker.stop()
    if os.environ.get("MAILSTREAM_BENCH_KEEP"):
        print(f"(logs and data kept in {root})")
    else:
        shutil.rmtree(root, ignore_errors=True)


async def wait_until(probe: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``probe`` every half second until it is true (an OSError counts as not yet);
    RuntimeError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
