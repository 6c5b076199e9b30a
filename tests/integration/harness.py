"""Real worker processes against the real embedded broker, one topic namespace per test."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from aiokafka import AIOKafkaConsumer

from mailstream.config.load import load_config
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.embedded_broker import EmbeddedBroker, free_port
from mailstream.kafka.topics import create_topics
from mailstream.producer import EventProducer

T = TypeVar("T")
PARTITIONS = 4
UNSUBSCRIBE_SECRET = "test-secret-for-one-click-links"
ADMIN_TOKEN = "test-admin-token-for-the-dashboard"
CLUSTER_SECRET = "test-cluster-secret-the-workers-share-0123456789"


async def wait_for(
    probe: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.3
) -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``timeout``.
    A probe that cannot reach a worker (it is restarting) counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            last = exc  # an exception is truthy: never taken for the answer
        else:
            if last:
                return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for the samples of a Prometheus text page."""
    samples = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


@dataclass
class Worker:
    name: str
    web_port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailstream", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(30)

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)  # a frozen worker cannot stop
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def get(
        self, path: str, *, token: str | None = ADMIN_TOKEN, **params: str
    ) -> tuple[int, Any]:
        """GET a path as the admin (``token=None``: as anyone)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session:
            async with session.get(
                self.url + path,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                if resp.content_type == "application/json":
                    return resp.status, await resp.json()
                return resp.status, await resp.text()

    async def health(self) -> dict[str, Any] | None:
        if not self.alive():
            raise AssertionError(f"worker {self.name} exited:\n{self.log_tail()}")
        try:
            status, body = await self.get("/health")
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
        return body if status == 200 else None

    async def metrics(self) -> dict[str, float]:
        status, body = await self.get("/metrics")
        assert status == 200
        return parse_metrics(body)


def broker_settings(broker: Any) -> dict[str, Any]:
    """A worker's ``broker:`` section for the broker under test. Apache Kafka refuses a
    session timeout under its group.min.session.timeout.ms (6 s by default)."""
    if isinstance(broker, EmbeddedBroker):
        return {
            "url": broker.url,
            "embedded": True,
            "session_timeout": "3s",
            "heartbeat_interval": "500ms",
        }
    return {
        "url": broker.url,
        "embedded": False,
        "session_timeout": "6s",
        "heartbeat_interval": "1s",
    }


@dataclass
class Deployment:
    """One test's namespace: its own app id, topics, consumer group and workers."""

    broker: EmbeddedBroker
    root: Path
    app_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    workers: list[Worker] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    # how the test's own clients connect (default: in plain text, to the broker's address)
    access: KafkaAccess | None = None
    partitions: int = PARTITIONS

    @property
    def kafka(self) -> KafkaAccess:
        return self.access or KafkaAccess.plain(self.broker.bootstrap_servers)

    @property
    def topics(self) -> dict[str, str]:
        names = (
            "events",
            "dlq",
            "sends_transactional",
            "sends_marketing",
            "feedback",
            "suppression",
            "webhooks",
            "feedback_claims",
            "sessions",
        )
        return {n: f"{self.app_id}.{n}" for n in names} | {"partitions": self.partitions}  # type: ignore[dict-item]

    @property
    def config_path(self) -> Path:
        return self.root / "mailstream.yaml"

    def write_config(self) -> None:
        doc: dict[str, Any] = {
            "app_id": self.app_id,
            "broker": broker_settings(self.broker),
            "topics": self.topics,
            "ingest": {"batch_within": "20ms"},
            "workflows": {},
            "providers": {"outbox": {"directory": str(self.root / "outbox")}},
        }
        for section, values in self.overrides.items():
            if isinstance(values, dict):
                doc.setdefault(section, {}).update(values)
            else:
                doc[section] = values
        self.config_path.write_text(yaml.safe_dump(doc))

    async def setup(self) -> None:
        self.write_config()
        # as a worker creates them (retention, compaction), or its check at start refuses them
        await create_topics(load_config(self.config_path, env={}), self.kafka)

    def worker(self, name: str, data_dir: Path | None = None) -> Worker:
        self.write_config()  # so overrides set by the test apply
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
        port = free_port()
        data = data_dir or self.root / f"data-{name}"
        env.update(
            MAILSTREAM_CONFIG=str(self.config_path),
            MAILSTREAM_WEB_PORT=str(port),
            MAILSTREAM_DATA_DIR=str(data),
            MAILSTREAM_UNSUBSCRIBE_SECRET=UNSUBSCRIBE_SECRET,
            MAILSTREAM_ADMIN_TOKEN=ADMIN_TOKEN,
            MAILSTREAM_CLUSTER_SECRET=CLUSTER_SECRET,
            PYTHONUNBUFFERED="1",
        )
        w = Worker(name, port, data, self.root / f"{name}-{len(self.workers)}.log", env)
        self.workers.append(w)
        return w

    async def wait_ready(self, workers: list[Worker], timeout: float = 90.0) -> None:
        """Until every worker is ready and together they own every partition once."""

        async def probe() -> bool:
            owned: list[int] = []
            for w in workers:
                h = await w.health()
                if not h or not h["ready"]:
                    return False
                owned.extend(h["partitions"])
            return sorted(owned) == list(range(self.partitions))

        await wait_for(probe, timeout, "workers to own all partitions")

    def producer(self) -> EventProducer:
        return EventProducer(self.kafka, self.topics["events"])

    async def read_topic(self, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
        """Every message of ``topic`` from the start; waits until ``expected`` have arrived."""
        consumer = AIOKafkaConsumer(
            topic,
            **self.kafka.client_kwargs(),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    messages.extend(msgs)
                if len(messages) >= expected and not batch:
                    break
        finally:
            await consumer.stop()
        return messages

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop()


async def get_users(
    worker: Worker, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, Any]]:
    """GET /api/users/{id} for each (tenant, user) on one worker, a few at a time."""
    results: dict[tuple[str, str], tuple[int, Any]] = {}
    sem = asyncio.Semaphore(8)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=15), headers=headers
    ) as session:

        async def one(key: tuple[str, str]) -> None:
            tenant, user = key
            async with (
                sem,
                session.get(
                    f"{worker.url}/api/users/{user}", params={"tenant": tenant, "full": "1"}
                ) as resp,
            ):
                results[key] = (resp.status, await resp.json())

        await asyncio.gather(*(one(k) for k in keys))
    return results


async def state_mismatches(
    worker: Worker, expected: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    """Every user whose state on ``worker`` differs from ``expected``, described."""
    got = await get_users(worker, sorted(expected))
    problems = []
    for key, want in expected.items():
        status, body = got[key]
        if status != 200 or body != want:
            problems.append(f"{key}: HTTP {status} {body} != {want}")
    return problems


async def wait_converged(
    worker: Worker, expected: dict[tuple[str, str], dict[str, Any]], timeout: float, what: str
) -> None:
    """Until every user's state on ``worker`` equals ``expected``; on timeout, show the diffs."""
    problems: list[str] = []

    async def probe() -> bool:
        nonlocal problems
        problems = await state_mismatches(worker, expected)
        return not problems

    try:
        await wait_for(probe, timeout, what)
    except AssertionError:
        shown = "\n".join(problems[:5])
        raise AssertionError(
            f"{what}: {len(problems)} of {len(expected)} users differ, e.g.\n{shown}"
        ) from None


async def read_json(deployment: Deployment, topic: str, expected: int, timeout: float) -> list[Any]:
    """The decoded JSON values of ``topic``, waiting up to ``timeout`` for ``expected``."""
    import orjson

    messages = await deployment.read_topic(topic, expected, timeout)
    return [orjson.loads(m.value) for m in messages]


async def wait_exit(worker: Worker, timeout: float) -> int:
    """The exit code of ``worker``, which must stop within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while worker.alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert worker.process is not None
    assert not worker.alive(), f"{worker.name} still runs after {timeout:.0f} s"
    return int(worker.process.returncode)
