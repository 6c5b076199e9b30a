"""A worker whose broker goes away, and one whose broker comes back without its data.

Each test runs its own embedded broker, so that stopping it harms no other test. Embedded
only: it stops a broker that keeps its topics in memory and brings it back empty, which
only the embedded broker does. A Kafka broker's failover is another matter (the cluster
fault tests).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailstream.kafka.embedded_broker import EmbeddedBroker, free_port
from tests.integration.harness import Deployment, Worker, metric_sum, wait_exit, wait_for


@pytest.fixture
async def own(tmp_path: Path) -> AsyncIterator[Deployment]:
    """A deployment on a broker of its own, which the test may stop and start."""
    broker = EmbeddedBroker("127.0.0.1", free_port(), log_path=tmp_path / "own-broker.log")
    broker.start()
    d = Deployment(broker, tmp_path)
    try:
        await d.setup()
        yield d
    finally:
        d.stop_all()
        broker.stop()


def log_lines(worker: Worker) -> list[str]:
    return worker.log_path.read_text(errors="replace").splitlines()


async def emit_and_wait(d: Deployment, worker: Worker, n: int) -> None:
    async with d.producer() as p:
        for i in range(n):
            await p.emit("identify", f"lost-{i}", {"email": f"lost-{i}@example.com"})
        await p.flush()

    async def processed() -> bool:
        m = await worker.metrics()
        return metric_sum(m, "mailstream_events_total", outcome="processed") >= n

    await wait_for(processed, 30, f"{n} events processed")


async def test_a_lost_broker_makes_the_worker_unready_at_once_quiet_and_then_gone(
    own: Deployment,
) -> None:
    own.overrides["broker"] = {"lost_after": "8s"}
    a = own.worker("a").start()
    await own.wait_ready([a])
    before = len(log_lines(a))

    own.broker.stop()
    stopped = time.monotonic()

    async def unready() -> dict[str, object] | None:
        h = await a.health()
        return h if h is not None and not h["ready"] else None

    h = await wait_for(unready, 6, "/health to report the worker not ready", interval=0.2)
    assert time.monotonic() - stopped < 6
    assert str(h["broker"]).startswith("unreachable since ")

    code = await wait_exit(a, 20)
    assert code != 0
    lines = log_lines(a)[before:]
    why = [line for line in lines if "CRITICAL" in line and "has not answered" in line]
    assert len(why) == 1, lines[-20:]
    assert own.broker.bootstrap_servers in why[0] and "broker.lost_after is 8 s" in why[0]
    # Without the filter, aiokafka logged about 250 lines a second here.
    assert len(lines) < 60, f"{len(lines)} lines in {time.monotonic() - stopped:.0f} s"
    assert "Traceback" not in "\n".join(lines)


async def test_a_broker_back_without_its_data_is_explained_not_crash_looped(
    own: Deployment,
) -> None:
    a = own.worker("a").start()
    await own.wait_ready([a])
    await emit_and_wait(own, a, 40)

    # A memory-only broker restarted: the topics are created again, empty.
    own.broker.stop()
    own.broker.start()
    await own.setup()

    assert await wait_exit(a, 20) == 2
    said = "\n".join(log_lines(a))
    assert "lost its data" in said and f"Remove {a.data_dir}" in said
    assert "Traceback" not in said

    # Started again on that data directory: the same line at once, and no traceback.
    again = own.worker("again", data_dir=a.data_dir).start()
    assert await wait_exit(again, 20) == 2
    lines = log_lines(again)
    assert "lost its data" in lines[-1] and f"the local state in {a.data_dir}" in lines[-1]
    assert "Traceback" not in "\n".join(lines)
