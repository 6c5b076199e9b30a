"""The pipeline's latency phase: a new worker fed the mix at a set rate, and the time
from each order's event to its receipt reaching the provider."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson

from mailstream.bench.cpu_time import CpuSpan, StolenSpan
from mailstream.bench.pipeline_site import Bench, worker_ready
from mailstream.bench.run_site import stop_processes, wait_until
from mailstream.bench.worker_metrics import Samples, quantile, read_samples, total, total_over
from mailstream.cli.loadgen import synthetic_events
from mailstream.producer import EventProducer

# Seconds of traffic at the latency phase's rate before its receipts count: the worker
# there has just started, and its first second shows that rather than the steady state.
# The warm-up's own p99 and largest are printed too.
LATENCY_WARMUP = 3.0
# rebalances a worker has completed, recovery included (Faust's own histogram)
REBALANCES = "faust_rebalance_done_latency_seconds_count"


async def measure_latency(
    bench: Bench,
    topics: dict[str, str],
    users: int,
    load: float,
    seconds: float,
    settings: dict[str, Any] | None = None,
    name: str = "bench-latency",
) -> dict[str, Any]:
    """Run the latency phase on a new worker of app ``name`` with ``topics`` (and
    ``settings`` added to its config): the mix over ``users`` new users at ``load`` events
    per second for ``LATENCY_WARMUP`` + ``seconds``; its figures, and what the worker and
    the broker spent meanwhile."""
    # New users on a new worker, like the pipeline's at its start: users' records grow
    # as their events come in (the deduplication window, the decisions kept), and on
    # the pipeline's users, aged by its events, an event cost a paced worker about 5 %
    # more CPU: half the pipeline's rate was a little more than half load there.
    worker = bench.start_worker(name, topics, settings=settings)
    await wait_until(lambda: worker_ready(worker), 120, "the latency worker to be ready")
    latency_cpu = CpuSpan([bench.procs[-1].pid])
    latency_broker = bench.broker_cpu()
    latency_stolen = StolenSpan()
    rebalances_before = total_over([worker], REBALANCES)
    latency_cpu.start()
    latency_broker.start()
    latency_stolen.start()
    started = time.monotonic()
    result = await latency(bench, topics["events"], users, load, seconds, LATENCY_WARMUP)
    latency_cpu.stop()
    latency_broker.stop()
    latency_stolen.stop()
    # how much of a core the worker needed at that rate (over the traffic and the
    # wait for the last receipts), and the broker beside it: the embedded broker's
    # cost per fetch grows with the record batches it holds (see the README)
    elapsed = time.monotonic() - started
    result["latency_worker_cores_busy"] = round(latency_cpu.seconds / elapsed, 2)
    result["latency_broker_cores_busy"] = (
        round(latency_broker.seconds / elapsed, 2) if bench.embedded else None
    )
    result["latency_cpu_stolen_share"] = round(latency_stolen.share, 3)
    # a rebalance pauses the worker for a second or more: one here explains a high p99
    result["latency_rebalances"] = int(total_over([worker], REBALANCES) - rebalances_before)
    samples = read_samples(worker)
    result.update(send_path(samples))
    # what an ingest batch's flush took, on average (its part of the latency)
    flushes = total(samples, "mailstream_ingest_flush_seconds_count")
    flush_sum = total(samples, "mailstream_ingest_flush_seconds_sum")
    result["latency_ingest_flush_ms_mean"] = round(1000 * flush_sum / max(flushes, 1), 1)
    stop_processes(bench.procs)
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(
    bench: Bench, topic: str, users: int, rate: float, seconds: float, warmup: float = 0.0
) -> dict[str, Any]:
    """Feed the mix at ``rate`` with wall-clock timestamps for ``warmup`` + ``seconds``;
    event-to-server latency of the order receipts, in milliseconds. Receipts for events
    of the first ``warmup`` seconds are reported apart: a worker just started has cold
    caches, templates not yet compiled and no connection to the provider yet."""
    source = synthetic_events(random.Random(2), users)
    # the same mix each time: an earlier phase's receipts carry the same order ids
    bench.sink.receipts.clear()
    produced: dict[str, float] = {}
    warm: set[str] = set()  # the orders of the warm-up
    async with EventProducer(bench.kafka, topic, linger_ms=1) as producer:
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < warmup + seconds:
            due = int(elapsed * rate) + 1 - sent
            for _ in range(max(due, 0)):
                key, value = next(source)
                event = orjson.loads(value)
                event["timestamp"] = int(time.time() * 1000)
                if event["event_type"] == "order_completed":
                    order = event["payload"]["order_id"]
                    produced[order] = event["timestamp"] / 1000
                    if elapsed < warmup:
                        warm.add(order)
                await producer.send_raw(key, orjson.dumps(event))
                sent += 1
            await asyncio.sleep(0.01)
        await producer.flush()
    await wait_until(
        lambda: all(o in bench.sink.receipts for o in produced), 60, "the latency receipts"
    )
    ms = [1000 * (bench.sink.receipts[o] - at) for o, at in produced.items() if o not in warm]
    result: dict[str, Any] = {
        "latency_rate_events_per_s": round(rate),
        "latency_receipts": len(ms),
        "latency_p50_ms": round(_percentile(ms, 0.50), 1),
        "latency_p95_ms": round(_percentile(ms, 0.95), 1),
        "latency_p99_ms": round(_percentile(ms, 0.99), 1),
        "latency_max_ms": round(max(ms, default=float("nan")), 1),
    }
    if warm:
        during = [1000 * (bench.sink.receipts[o] - produced[o]) for o in warm]
        result["latency_warmup_s"] = warmup
        result["latency_warmup_p99_max_ms"] = f"{_percentile(during, 0.99):.0f} / {max(during):.0f}"
    return result


def send_path(samples: Samples) -> dict[str, Any]:
    """Where the latency goes, from the worker's own histogram: the p50 and p99 of the
    time from the event to each stage of a send (bucket upper bounds, in ms)."""
    out: dict[str, Any] = {}
    for stage in ("written", "taken", "queued", "calling"):
        bounds = [
            1000 * quantile(samples, "mailstream_send_path_seconds", q, stage=stage)
            for q in (0.5, 0.99)
        ]
        out[f"path_{stage}_p50_p99_le_ms"] = " / ".join(f"{b:g}" for b in bounds)
    return out
