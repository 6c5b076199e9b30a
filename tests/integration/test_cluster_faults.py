"""The faults of a three-node Apache Kafka cluster, under steady load: a broker killed,
every broker restarted in turn, a worker frozen past its session, a worker killed and
replaced by one with no local state, workers leaving and rejoining, and the cluster out
of a worker's reach for 30 s. What must hold through each is in
tests/integration/cluster_faults.py.

Each fault hits one deployment per processing guarantee in ``MODES`` at once (both by
default), each with its own topics, workers and provider: a
cluster fault hits them together, a worker fault is done to each. These tests stop and
freeze brokers, so they run on a cluster of their own (one per test module), never on
the Kafka tier's shared one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailstream.kafka.local_cluster import KafkaUnavailable, LocalKafka
from mailstream.kafka.membership import EXIT_PAUSED
from tests.fakes.http_providers import FakeProviders
from tests.integration import brokers
from tests.integration.cluster_faults import (
    WORKFLOWS,
    Load,
    check_outcome,
    in_sync,
    leaders,
)
from tests.integration.harness import Deployment, Worker, wait_exit, wait_for
from tests.integration.test_delivery import start, use_fake

MakeDeployment = Callable[..., Awaitable[Deployment]]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    if "kafka" not in brokers.tiers():
        pytest.skip(f"{brokers.TIERS_ENV} leaves out the Kafka tier")
    kafka = LocalKafka(tmp_path_factory.mktemp("faults"), nodes=3)
    try:
        kafka.start()
    except KafkaUnavailable as exc:
        brokers.unavailable(str(exc))
    yield kafka
    kafka.stop()


@pytest.fixture
async def deploy(cluster: LocalKafka, tmp_path: Path) -> AsyncIterator[MakeDeployment]:
    """Makes a deployment on the fault cluster, every node of it running and awake."""
    for node in cluster.nodes:
        if node.node_id in cluster.running():
            cluster.signal_node(node.node_id, signal.SIGCONT)
        else:
            await asyncio.to_thread(cluster.start_node, node.node_id)
    made: list[Deployment] = []

    async def make(partitions: int, mode: str) -> Deployment:
        (tmp_path / mode).mkdir()
        d = Deployment(cluster, tmp_path / mode, partitions=partitions)  # type: ignore[arg-type]
        d.overrides["workflows"] = WORKFLOWS
        d.overrides["processing_guarantee"] = mode
        await d.setup()
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.stop_all()


# Both guarantees by default; MAILSTREAM_FAULT_MODES=exactly_once (say) runs one of them.
MODES = tuple(os.environ.get("MAILSTREAM_FAULT_MODES", "at_least_once,exactly_once").split(","))


@dataclass
class Run:
    """One deployment of a fault test: its processing guarantee, workers and load."""

    mode: str
    d: Deployment
    fake: FakeProviders
    workers: list[Worker]
    load: Load
    producing: asyncio.Task[None]

    async def finish(self, workers: list[Worker] | None = None) -> None:
        """The fault is over: the rest of the load, then everything must add up."""
        self.load.fault_over.set()
        await self.producing
        await check_outcome(self.d, workers or self.workers, self.fake, self.load)


@asynccontextmanager
async def loaded(
    deploy: MakeDeployment,
    names: tuple[str, ...],
    seed: int,
    per_second: float,
    partitions: int = 4,
) -> AsyncIterator[list[Run]]:
    """A deployment per processing guarantee, workers ``names`` ready in each and the
    load being produced to each."""
    async with AsyncExitStack() as stack:

        async def run(mode: str) -> Run:
            d = await deploy(partitions, mode)
            fake = await stack.enter_async_context(FakeProviders())
            use_fake(d, fake, rate_limit=2000, concurrency=16)
            workers = [start(d, fake, name) for name in names]
            await d.wait_ready(workers)
            load = Load.make(seed=seed, users=60)
            return Run(mode, d, fake, workers, load, asyncio.create_task(load.run(d, per_second)))

        runs = list(await asyncio.gather(*(run(mode) for mode in MODES)))
        try:
            yield runs
        finally:
            for r in runs:
                r.producing.cancel()


async def each(runs: list[Run], step: Callable[[Run], Awaitable[None]]) -> None:
    """``step`` for every deployment at once; a failure names its processing guarantee."""
    results = await asyncio.gather(*(step(r) for r in runs), return_exceptions=True)
    for r, result in zip(runs, results, strict=True):
        if isinstance(result, BaseException):
            raise AssertionError(f"under {r.mode}: {result}") from result


async def test_the_leading_broker_killed_mid_stream_and_back_20_s_later(
    deploy: MakeDeployment, cluster: LocalKafka
) -> None:
    async with loaded(deploy, ("a", "b"), seed=1, per_second=30) as runs:
        await each(runs, lambda r: r.load.until_produced(0.25))
        # the node leading most partitions of the events and of the users' changelog
        led: Counter[int] = Counter()
        for r in runs:
            led.update(await leaders(r.d, ".events", "users-changelog"))
        victim = led.most_common(1)[0][0]
        cluster.signal_node(victim, signal.SIGKILL)
        await asyncio.sleep(20)
        await asyncio.to_thread(cluster.start_node, victim)
        await each(runs, lambda r: r.finish())
        assert all(w.alive() for r in runs for w in r.workers)


async def test_a_rolling_restart_of_every_broker_under_load(
    deploy: MakeDeployment, cluster: LocalKafka
) -> None:
    async with loaded(deploy, ("a", "b"), seed=2, per_second=20) as runs:
        await each(runs, lambda r: r.load.until_produced(0.1))
        for node in cluster.nodes:
            # as an operator upgrades: one node at a time, the next once all are in sync
            await asyncio.to_thread(cluster.stop_node, node.node_id)
            await asyncio.to_thread(cluster.start_node, node.node_id)

            async def all_in_sync() -> bool:
                return all([await in_sync(r.d) for r in runs])

            await wait_for(all_in_sync, 90, f"node {node.node_id} back in sync")
        await each(runs, lambda r: r.finish())
        assert all(w.alive() for r in runs for w in r.workers)


async def test_a_worker_killed_and_replaced_by_one_with_an_empty_data_dir(
    deploy: MakeDeployment,
) -> None:
    async def fault(r: Run) -> None:
        a, b = r.workers
        await r.load.until_produced(0.4)
        b.kill(signal.SIGKILL)
        c = start(r.d, r.fake, "c")
        assert c.data_dir != b.data_dir
        await r.finish([a, c])

    async with loaded(deploy, ("a", "b"), seed=4, per_second=50) as runs:
        await each(runs, fault)


async def test_three_workers_on_12_partitions_one_leaves_and_rejoins_twice(
    deploy: MakeDeployment,
) -> None:
    async def fault(r: Run) -> None:
        a, b, c = r.workers
        for _ in range(2):
            await asyncio.sleep(5)
            await asyncio.to_thread(c.stop)  # leaves the group as a deploy does (SIGTERM)
            await r.d.wait_ready([a, b])
            c = start(r.d, r.fake, "c", data_dir=c.data_dir)
            await r.d.wait_ready([a, b, c])
        await r.finish([a, b, c])

    async with loaded(deploy, ("a", "b", "c"), seed=5, per_second=30, partitions=12) as runs:
        await each(runs, fault)


async def test_a_worker_frozen_past_its_session_wakes_up_as_a_zombie(
    deploy: MakeDeployment,
) -> None:
    async def fault(r: Run) -> None:
        a, b = r.workers
        await r.load.until_produced(0.3)
        assert a.process is not None
        os.kill(a.process.pid, signal.SIGSTOP)
        try:
            await r.d.wait_ready([b])  # b took a's partitions: a's session has expired
            await asyncio.sleep(3)  # and has worked on them a while
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
        # The zombie wakes with batches, timers and sends in hand, all stale: it stops at
        # once, saying why (under exactly_once its transactions are fenced besides), and
        # its supervisor starts it again on the same data.
        assert await wait_exit(a, 15) == EXIT_PAUSED
        assert "longer than its group session" in a.log_tail(), a.log_tail()
        again = start(r.d, r.fake, "a", data_dir=a.data_dir)
        await r.finish([again, b])

    async with loaded(deploy, ("a", "b"), seed=3, per_second=40) as runs:
        await each(runs, fault)


async def test_the_cluster_out_of_reach_for_30_s(
    deploy: MakeDeployment, cluster: LocalKafka
) -> None:
    async with loaded(deploy, ("a",), seed=6, per_second=40) as runs:
        await each(runs, lambda r: r.load.until_produced(0.3))
        lines_before = {}
        for r in runs:
            r.load.going.clear()
            lines_before[r.mode] = len(r.workers[0].log_path.read_bytes().splitlines())
        for node in cluster.nodes:  # every node frozen: connections open, no answers
            cluster.signal_node(node.node_id, signal.SIGSTOP)
        try:

            async def unready(r: Run) -> None:
                async def said() -> bool:
                    health = await r.workers[0].health()
                    return health is not None and not health["ready"]

                await wait_for(said, 10, "the worker to say it is not ready")

            await each(runs, unready)
            await asyncio.sleep(30)
            for r in runs:
                a = r.workers[0]
                assert a.alive(), f"{r.mode}: {a.log_tail()}"
                health = await a.health()
                assert health is not None and not health["ready"], f"{r.mode}: ready, no broker"
        finally:
            for node in cluster.nodes:
                cluster.signal_node(node.node_id, signal.SIGCONT)
        for r in runs:
            outage = r.workers[0].log_path.read_bytes().splitlines()[lines_before[r.mode] :]
            assert len(outage) < 60, b"\n".join(outage[-20:]).decode(errors="replace")
            r.load.going.set()
        await each(runs, lambda r: r.finish())
