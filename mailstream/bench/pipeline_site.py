"""The processes a pipeline run starts beside its broker: the provider sink, workers
with the shipped journeys, and the bare Faust agents of the ceiling."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import yaml

from mailstream.bench.cpu_time import CpuSpan
from mailstream.bench.provider_sink import Sink
from mailstream.bench.run_site import Site, stop_processes, wait_until
from mailstream.config.kafka_sections import SecurityConfig
from mailstream.kafka.embedded_broker import free_port
from mailstream.producer import EventProducer

PARTITIONS = 4


class Bench(Site):
    """The broker, the sink and the workers of one run, and where their files go."""

    def __init__(
        self, root: Path, broker_url: str | None = None, security: SecurityConfig | None = None
    ) -> None:
        super().__init__(root, broker_url, security)
        self.sink = Sink()
        self.procs: list[subprocess.Popen[bytes]] = []

    def broker_cpu(self) -> CpuSpan:
        """The broker's CPU time, when the bench started it (else none is measured)."""
        process = self.broker.process
        return CpuSpan([process.pid] if process is not None else [])

    async def produce(
        self, topic: str, pairs: Iterator[tuple[bytes | None, bytes]], n: int
    ) -> None:
        async with EventProducer(self.kafka, topic, linger_ms=20) as producer:
            for _ in range(n):
                key, value = next(pairs)
                await producer.send_raw(key, value)
            await producer.flush()

    def start_worker(
        self,
        name: str,
        topics: dict[str, str],
        index: int = 0,
        settings: dict[str, Any] | None = None,
    ) -> str:
        """Start a worker of app ``name`` (with ``settings`` added to its config);
        returns its web URL."""
        port = free_port()
        config: dict[str, Any] = {
            **(settings or {}),
            "app_id": self.apart(name),
            "broker": self.broker_config(),
            "topics": topics,
            "delivery": {"provider": "postmark", "rate_limit": 1_000_000, "concurrency": 64},
            "providers": {"postmark": {"base_url": self.sink.url}},
        }
        self.procs.append(
            self.spawn_worker(f"{name}-{index}", config, port, POSTMARK_SERVER_TOKEN="bench")
        )
        return f"http://127.0.0.1:{port}"


@asynccontextmanager
async def running_bench(
    broker_url: str | None, security: SecurityConfig | None
) -> AsyncIterator[Bench]:
    """A bench with its broker (started here unless ``broker_url``) and sink running, in
    a temporary directory; everything stopped and cleaned up after."""
    bench = Bench(Path(tempfile.mkdtemp(prefix="mailstream-bench-")), broker_url, security)
    try:
        bench.broker.start()
        await bench.sink.start()
        yield bench
    finally:
        await bench.sink.stop()
        await bench.close(bench.procs)


def broker_cores(bench: Bench, cpu: CpuSpan, seconds: float) -> str:
    """How much of a core the broker took, when the bench started it."""
    return f"{cpu.seconds / seconds:.2f}" if bench.embedded else "n/a"


async def ceiling_rate(
    bench: Bench, topic: str, events: int, name: str = "ceiling", agents: int = 1
) -> float:
    """Events per second of ``agents`` bare Faust agents (mailstream.bench.ceiling) in one
    group, sharing the partitions of ``topic``: from the first event any of them decoded
    to the last."""
    dirs = [bench.root / f"{name}-{i}" for i in range(agents)]
    broker_file = bench.root / f"{name}-broker.yaml"  # how the agents connect
    broker_file.write_text(yaml.safe_dump({"broker": bench.broker_config()}))
    procs = []
    for i, datadir in enumerate(dirs):
        datadir.mkdir()
        with open(bench.root / f"{name}-{i}.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mailstream.bench.ceiling",
                        bench.broker.bootstrap_servers,
                        topic,
                        str(PARTITIONS),
                        # its own group: each run reads from the start
                        bench.apart(f"bench-{name}"),
                        str(datadir),
                        "embedded" if bench.embedded else "existing",
                        str(broker_file),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    bench.procs.extend(procs)

    def spans() -> list[dict[str, float]]:
        files = [d / "span.json" for d in dirs]
        return [orjson.loads(f.read_bytes()) for f in files if f.exists()]

    def done() -> bool:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a ceiling agent exited; see {bench.root}/{name}-*.log")
        return sum(span["n"] for span in spans()) >= events

    await wait_until(done, 600, "the ceiling agents")
    stop_processes(procs)
    decoded = spans()
    first = min(span["first"] for span in decoded)
    last = max(span["last"] for span in decoded)
    return events / max(last - first, 1e-6)


def worker_ready(web_url: str) -> bool:
    """The worker at ``web_url`` has joined, recovered its tables and owns every partition."""
    try:
        with urllib.request.urlopen(f"{web_url}/health", timeout=2) as resp:
            health = orjson.loads(resp.read())
    except OSError:
        return False
    return bool(health["ready"]) and len(health["partitions"]) == PARTITIONS
