"""``mailstream bench --broker``: each scenario on a broker it did not start, end to end
at a small size. It must measure every phase there, leave nothing behind on the broker
(nor touch the topics of a mailstream running there), and claim no figure for a broker
process it cannot see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from mailstream.kafka.embedded_broker import EmbeddedBroker

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.only_on(
        "kafka",
        reason="`--broker` measures the cluster a deployment runs on, Apache Kafka; the"
        " embedded broker is what `mailstream bench` starts when not given one",
    ),
]


async def _topics(broker: EmbeddedBroker) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        # Every name a bench run gives starts with "bench-" (its topics, its workers' app
        # ids and so their changelogs). Only those: on the Kafka tier the test processes
        # share one cluster, and another test makes and drops topics meanwhile.
        return {t for t in await admin.list_topics() if t.startswith("bench-")}
    finally:
        await admin.close()


async def _bench(broker: EmbeddedBroker, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run ``mailstream bench ARGS --broker`` (the session's broker); its figures, once
    the broker's topics are checked to be as they were before the run."""
    before = await _topics(broker)
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "mailstream", "bench", *args, "--broker", broker.url]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # what the run created on the broker (its topics, its workers' changelogs) is gone
    assert await _topics(broker) - before == set()
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    assert result["broker"].startswith(broker.url)
    return result


async def test_the_guarantees_bench_measures_both_modes_on_an_existing_broker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # (the pipeline scenario on an existing broker: test_security, on a secured cluster)
    result = await _bench(
        broker,
        tmp_path,
        "guarantees",
        *("--events", "8000", "--mix-users", "400", "--latency-seconds", "3", "--pairs", "1"),
    )
    for mode in ("at_least_once", "exactly_once"):
        assert result[f"{mode}_events_per_s"] > 0
        assert result[f"{mode}_latency_receipts"] > 0 and result[f"{mode}_latency_p99_ms"] > 0
    assert result["exactly_once_ratio_to_at_least_once"] > 0


async def test_the_timers_bench_runs_on_an_existing_broker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    result = await _bench(
        broker, tmp_path, "timers", "--pending", "300", "--probes", "10", "--wait", "1"
    )
    assert result["pending_timers"] == 300
    assert result["probe_timers_fired"] == 10 and result["lag_mean_ms"] >= 0


async def test_the_delivery_bench_runs_on_an_existing_broker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    result = await _bench(broker, tmp_path, "delivery", "--sends", "300", "--rate", "10")
    assert result["sends"] == 300 and result["sends_per_s_no_limit"] > 0
    assert result["sends_per_s_limited"] > 0


async def test_the_http_bench_runs_on_an_existing_broker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    result = await _bench(broker, tmp_path, "http", "--events", "1000", "--batch", "50")
    assert result["events"] == 1000 and result["http_events_per_s"] > 0
    assert 0 < result["request_p50_ms"] <= result["request_p99_ms"]
