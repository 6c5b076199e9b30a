"""The brokers the integration tests run on, one tier each: the embedded broker (one per
test process) and a 3-node Apache Kafka cluster (replication 3, min.insync.replicas 2)
shared by every test process of a session. Tests are isolated by app id and topic prefix.

``MAILSTREAM_TEST_BROKERS`` (default ``embedded,kafka``) picks the tiers. When Java or
Maven is missing the Kafka tier is skipped with one loud line; with ``CI=true`` it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailstream.kafka.local_cluster import KafkaUnavailable, LocalKafka, file_lock

TIERS = ("embedded", "kafka")
TIERS_ENV = "MAILSTREAM_TEST_BROKERS"
SKIPPED = "the Kafka tier did not run"
CLUSTER_FILE = "kafka-cluster.json"

# The cluster this process started, kept for the life of the process: its nodes outlive
# the session's fixtures (the other test processes use them), and a collected Popen of a
# running process is a ResourceWarning.
_started: list[LocalKafka] = []


def tiers() -> list[str]:
    raw = os.environ.get(TIERS_ENV, "")
    names = [t.strip() for t in raw.split(",") if t.strip()] or list(TIERS)
    unknown = sorted(set(names) - set(TIERS))
    if unknown:
        raise pytest.UsageError(f"{TIERS_ENV}: unknown broker {unknown}; known: {TIERS}")
    return names


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip the test, or fail it in CI, where a tier that cannot start must not pass."""
    if in_ci():
        pytest.fail(f"{SKIPPED} and CI=true: {reason}", pytrace=False)
    pytest.skip(f"{SKIPPED}: {reason}")


@dataclass(frozen=True)
class SharedKafka:
    """A test process's handle on the session's cluster, which another process may have
    started: what tests read from a broker (addresses, replication)."""

    bootstrap_servers: str
    replication: int
    min_insync: int

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap_servers}"


def shared_kafka(root: Path) -> tuple[SharedKafka, list[int] | None]:
    """The cluster of the session whose processes share ``root``: started by the first
    process to ask, whose pids it returns (the others get None). A cluster that could
    not start is remembered, so the other processes do not try again."""
    root.mkdir(parents=True, exist_ok=True)
    record = root / CLUSTER_FILE
    with file_lock(root / "kafka.lock"):
        if record.exists():
            data = json.loads(record.read_text())
            if "error" in data:
                raise KafkaUnavailable(data["error"])
            handle = SharedKafka(data["bootstrap_servers"], data["replication"], data["min_insync"])
            return handle, None
        cluster = LocalKafka(root / "kafka", nodes=3)
        try:
            cluster.start()
        except KafkaUnavailable as exc:
            record.write_text(json.dumps({"error": str(exc)}))
            raise
        _started.append(cluster)
        pids = [n.process.pid for n in cluster.nodes if n.process is not None]
        handle = SharedKafka(cluster.bootstrap_servers, cluster.replication, cluster.min_insync)
        record.write_text(json.dumps(handle.__dict__ | {"pids": pids}))
        return handle, pids


def stop_pids(pids: list[int], timeout: float = 30.0) -> None:
    """Stop the cluster's nodes by pid: they outlive the test process that started them,
    so the session's controller stops them once every test process is done."""
    alive = [p for p in pids if _running(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """A Kafka node, alive and not a zombie (a node whose parent exited is reaped by
    someone else)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if b"kafka.Kafka" not in command:
        return False
    state = next((line for line in status.splitlines() if line.startswith("State:")), "")
    return "Z" not in state.split()[1:2]
