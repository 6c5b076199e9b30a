"""The faults of a three-node Apache Kafka cluster, under steady load: a broker killed,
every broker restarted in turn, a worker frozen past its session, a worker killed and
replaced by one with no local state, workers leaving and rejoining, and the cluster out
of a worker's reach for 30 s. What must hold through each is in
tests/integration/cluster_faults.py.

These tests stop and freeze brokers, so they run on a cluster of their own (one per
test module), never on the Kafka tier's shared one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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


@pytest.fixture(params=["at_least_once", "exactly_once"])
async def deploy(
    cluster: LocalKafka, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[MakeDeployment]:
    """Makes a deployment on the fault cluster, every node of it running and awake, with
    each processing guarantee in turn."""
    for node in cluster.nodes:
        if node.node_id in cluster.running():
            cluster.signal_node(node.node_id, signal.SIGCONT)
        else:
            await asyncio.to_thread(cluster.start_node, node.node_id)
    made: list[Deployment] = []

    async def make(partitions: int = 4) -> Deployment:
        d = Deployment(cluster, tmp_path, partitions=partitions)  # type: ignore[arg-type]
        d.overrides["workflows"] = WORKFLOWS
        d.overrides["processing_guarantee"] = request.param
        await d.setup()
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.stop_all()


async def _loaded(
    d: Deployment, fake: FakeProviders, names: tuple[str, ...], seed: int, per_second: float
) -> tuple[list[Worker], Load, asyncio.Task[None]]:
    """Workers ``names`` ready, and the load being produced."""
    use_fake(d, fake, rate_limit=2000, concurrency=16)
    workers = [start(d, fake, name) for name in names]
    await d.wait_ready(workers)
    load = Load.make(seed=seed, users=100)
    return workers, load, asyncio.create_task(load.run(d, per_second))


async def test_the_leading_broker_killed_mid_stream_and_back_20_s_later(
    deploy: MakeDeployment, cluster: LocalKafka
) -> None:
    d = await deploy()
    async with FakeProviders() as fake:
        workers, load, producing = await _loaded(d, fake, ("a", "b"), seed=1, per_second=30)
        await load.until_produced(0.25)
        # the node leading most partitions of the events and of the users' changelog
        victim = (await leaders(d, ".events", "users-changelog")).most_common(1)[0][0]
        cluster.signal_node(victim, signal.SIGKILL)
        await asyncio.sleep(20)
        await asyncio.to_thread(cluster.start_node, victim)
        load.fault_over.set()
        await producing
        await check_outcome(d, workers, fake, load)
        assert all(w.alive() for w in workers)


async def test_a_rolling_restart_of_every_broker_under_load(
    deploy: MakeDeployment, cluster: LocalKafka
) -> None:
    d = await deploy()
    async with FakeProviders() as fake:
        workers, load, producing = await _loaded(d, fake, ("a", "b"), seed=2, per_second=20)
        await load.until_produced(0.1)
        for node in cluster.nodes:
            # as an operator upgrades: one node at a time, the next once all are in sync
            await asyncio.to_thread(cluster.stop_node, node.node_id)
            await asyncio.to_thread(cluster.start_node, node.node_id)
            await wait_for(lambda: in_sync(d), 90, f"node {node.node_id} back in sync")
        load.fault_over.set()
        await producing
        await check_outcome(d, workers, fake, load)
        assert all(w.alive() for w in workers)


async def test_a_worker_killed_and_replaced_by_one_with_an_empty_data_dir(
    deploy: MakeDeployment,
) -> None:
    d = await deploy()
    async with FakeProviders() as fake:
        (a, b), load, producing = await _loaded(d, fake, ("a", "b"), seed=4, per_second=50)
        await load.until_produced(0.4)
        b.kill(signal.SIGKILL)
        c = start(d, fake, "c")
        assert c.data_dir != b.data_dir
        load.fault_over.set()
        await producing
        await check_outcome(d, [a, c], fake, load)


async def test_three_workers_on_12_partitions_one_leaves_and_rejoins_twice(
    deploy: MakeDeployment,
) -> None:
    d = await deploy(partitions=12)
    async with FakeProviders() as fake:
        (a, b, c), load, producing = await _loaded(d, fake, ("a", "b", "c"), seed=5, per_second=20)
        for _ in range(2):
            await asyncio.sleep(5)
            await asyncio.to_thread(c.stop)  # leaves the group as a deploy does (SIGTERM)
            await d.wait_ready([a, b])
            c = start(d, fake, "c", data_dir=c.data_dir)
            await d.wait_ready([a, b, c])
        load.fault_over.set()
        await producing
        await check_outcome(d, [a, b, c], fake, load)


async def test_a_worker_frozen_past_its_session_wakes_up_as_a_zombie(
    deploy: MakeDeployment,
) -> None:
    d = await deploy()
    async with FakeProviders() as fake:
        (a, b), load, producing = await _loaded(d, fake, ("a", "b"), seed=3, per_second=40)
        await load.until_produced(0.3)
        assert a.process is not None
        os.kill(a.process.pid, signal.SIGSTOP)
        try:
            await d.wait_ready([b])  # b took a's partitions: a's session has expired
            await asyncio.sleep(3)  # and has worked on them a while
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
        # The zombie wakes with batches, timers and sends in hand, all stale: it stops at
        # once, saying why, and its supervisor starts it again on the same data.
        assert await wait_exit(a, 15) == EXIT_PAUSED
        assert "longer than its group session" in a.log_tail(), a.log_tail()
        again = start(d, fake, "a", data_dir=a.data_dir)
        load.fault_over.set()
        await producing
        await check_outcome(d, [again, b], fake, load)


async def test_the_cluster_out_of_reach_for_30_s(
    deploy: MakeDeployment, cluster: LocalKafka
) -> None:
    d = await deploy()
    async with FakeProviders() as fake:
        workers, load, producing = await _loaded(d, fake, ("a",), seed=6, per_second=40)
        (a,) = workers
        await load.until_produced(0.3)
        load.going.clear()
        lines_before = len(a.log_path.read_bytes().splitlines())
        for node in cluster.nodes:  # every node frozen: connections open, no answers
            cluster.signal_node(node.node_id, signal.SIGSTOP)
        try:

            async def unready() -> bool:
                health = await a.health()
                return health is not None and not health["ready"]

            await wait_for(unready, 10, "the worker to say it is not ready")
            await asyncio.sleep(30)
            assert a.alive(), a.log_tail()
            health = await a.health()
            assert health is not None and not health["ready"], "ready without its broker"
        finally:
            for node in cluster.nodes:
                cluster.signal_node(node.node_id, signal.SIGCONT)
        outage_lines = a.log_path.read_bytes().splitlines()[lines_before:]
        assert len(outage_lines) < 60, b"\n".join(outage_lines[-20:]).decode(errors="replace")
        load.going.set()
        load.fault_over.set()
        await producing
        await check_outcome(d, workers, fake, load)
