"""``mailstream bench guarantees``: the two processing guarantees side by side on one
Apache Kafka cluster, in one run.

1. throughput, ``rounds`` times: one worker with the shipped journeys at_least_once, then
   one exactly_once, each an app of its own on the same pre-produced events (alternated,
   so the machine's drift falls on both); the ratio is of the means;
2. latency: a new worker in each mode, on topics of its own, fed the mix at half load
   (half that mode's mean rate), event to provider as in ``bench pipeline``.

The embedded broker has no transactions: this scenario needs ``--broker``.
"""

from __future__ import annotations

import random
from pathlib import Path
from statistics import fmean
from typing import Any

import orjson

from mailstream.bench.paced_latency import LATENCY_WARMUP, measure_latency
from mailstream.bench.pipeline_site import running_bench
from mailstream.bench.scale_out import Phase, one_worker
from mailstream.cli.loadgen import synthetic_events
from mailstream.config.kafka_sections import SecurityConfig

MODES = ("at_least_once", "exactly_once")


async def bench_guarantees(
    events: int,
    users: int,
    latency_seconds: float,
    out: Path,
    broker_url: str,
    security: SecurityConfig | None = None,
    rounds: int = 2,
) -> dict[str, Any]:
    """Run the guarantees scenario's phases; its figures, also written to ``out``."""
    async with running_bench(broker_url, security) as bench:
        source = await bench.events_topic("bench-source")
        print(f"producing {events:,} events over {users:,} users ...", flush=True)
        mix = synthetic_events(random.Random(1), users, duplicates=0.02, malformed=0.005)
        await bench.produce(source, mix, events)

        phases: dict[str, list[Phase]] = {mode: [] for mode in MODES}
        for n in range(rounds):
            for mode in MODES:
                print(f"throughput {n + 1}/{rounds}: one worker, {mode} ...", flush=True)
                settings = {"processing_guarantee": mode}
                name = f"bench-{mode.replace('_', '-')}-{n}"
                phases[mode].append(await one_worker(bench, name, source, events, settings))
        rates = {mode: fmean(p.rate for p in phases[mode]) for mode in MODES}
        result: dict[str, Any] = {
            "scenario": "guarantees",
            "broker": bench.described,
            "events": events,
            "users": users,
        }
        for mode in MODES:
            result[f"{mode}_events_per_s"] = round(rates[mode])
            result[f"{mode}_each"] = " / ".join(f"{p.rate:,.0f}" for p in phases[mode])
            result[f"{mode}_cpu_us_per_event"] = " / ".join(
                str(p.us_per_event) for p in phases[mode]
            )
        result["exactly_once_ratio_to_at_least_once"] = (
            round(rates["exactly_once"] / rates["at_least_once"], 3)
            if rates["at_least_once"] > 0
            else None
        )

        for mode in MODES:  # each at half its own rate: half load
            load = rates[mode] / 2
            print(
                f"latency, {mode}: the mix at {load:,.0f} events/s for {LATENCY_WARMUP:g}s +"
                f" {latency_seconds:g}s ...",
                flush=True,
            )
            name = f"bench-latency-{mode.replace('_', '-')}"
            settings = {"processing_guarantee": mode}
            topics = await bench.topics(name)
            figures = await measure_latency(
                bench, topics, users, load, latency_seconds, settings, name
            )
            result[f"{mode}_latency_events_per_s"] = round(load)
            for key in (
                "p50_ms",
                "p99_ms",
                "max_ms",
                "receipts",
                "rebalances",
                "ingest_flush_ms_mean",
                "worker_cores_busy",
            ):
                result[f"{mode}_latency_{key}"] = figures[f"latency_{key}"]
            # where the time goes: event to each stage of a send
            for key in [k for k in figures if k.startswith("path_")]:
                result[f"{mode}_{key}"] = figures[key]
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        return result
