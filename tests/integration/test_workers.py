"""Several workers: they split the partitions, answer for any user, and survive SIGKILL."""

from __future__ import annotations

import signal

from tests.integration.harness import (
    Deployment,
    Worker,
    metric_sum,
    state_mismatches,
    wait_converged,
    wait_for,
)
from tests.integration.test_ingest import produce
from tests.integration.traffic import Traffic, make_traffic, replay


async def test_two_workers_split_partitions_and_route_user_lookups(deployment: Deployment) -> None:
    traffic = make_traffic(
        seed=11, users=200, count=3_000, duplicates=0.05, malformed=0.0, tenants=(None, "acme")
    )
    a = deployment.worker("a").start()
    b = deployment.worker("b").start()
    await deployment.wait_ready([a, b])
    owned = [set((await w.health())["partitions"]) for w in (a, b)]  # type: ignore[index]
    assert owned[0] and owned[1] and not owned[0] & owned[1], owned

    await produce(deployment, traffic)

    async def all_consumed() -> bool:
        total = 0.0
        for w in (a, b):
            total += metric_sum(await w.metrics(), "mailstream_events_consumed_total")
        return total >= len(traffic.messages)

    await wait_for(all_consumed, 120, "both workers to consume everything")
    expected = replay(traffic.valid)
    assert {t for t, _ in expected} == {"default", "acme"}
    # Every user, asked on either worker, answers with the owner's state.
    assert await state_mismatches(a, expected) == []
    assert await state_mismatches(b, expected) == []


async def _kill_mid_stream(deployment: Deployment, victim: Worker, total: int) -> None:
    async def halfway() -> bool:
        consumed = metric_sum(await victim.metrics(), "mailstream_events_consumed_total")
        return consumed >= total // 4

    await wait_for(halfway, 120, "a quarter of the events to be consumed", interval=0.05)
    consumed = metric_sum(await victim.metrics(), "mailstream_events_consumed_total")
    victim.kill(signal.SIGKILL)
    assert consumed < total, "the kill must land mid-stream"


async def _run_and_kill(deployment: Deployment, seed: int) -> tuple[Traffic, Worker]:
    """Worker "a" gets 8,000 events and is SIGKILLed a quarter of the way through."""
    traffic = make_traffic(seed=seed, users=150, count=8_000, duplicates=0.05, malformed=0.0)
    a = deployment.worker("a").start()
    await deployment.wait_ready([a])
    await produce(deployment, traffic)
    await _kill_mid_stream(deployment, a, len(traffic.messages))
    return traffic, a


async def test_sigkill_and_restart_loses_no_state_and_counts_nothing_twice(
    deployment: Deployment,
) -> None:
    traffic, a = await _run_and_kill(deployment, seed=23)

    again = deployment.worker("a", data_dir=a.data_dir).start()
    await deployment.wait_ready([again])
    await wait_converged(again, replay(traffic.valid), 120, "the restarted worker")


async def test_sigkill_then_takeover_with_empty_data_dir_recovers_from_changelog(
    deployment: Deployment,
) -> None:
    # Compressed changelogs, as `broker.compression` can make them, read back the same.
    deployment.overrides["broker"] = {"compression": "lz4"}
    traffic, a = await _run_and_kill(deployment, seed=31)
    # A different worker with no local RocksDB files: all state comes from the changelog.
    b = deployment.worker("b").start()
    assert b.data_dir != a.data_dir
    await deployment.wait_ready([b])
    await wait_converged(b, replay(traffic.valid), 120, "the new worker")
