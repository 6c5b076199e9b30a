"""``mailstream bench pipeline``: the engine's throughput, latency, scale-out and state
size, against a bare Faust agent on the same topic, all measured in one run.

Phases, each an app of its own writing to topics of its own, so one cannot feed another:
1. ceiling: a bare Faust agent (mailstream.bench.ceiling) decodes the pre-produced events;
2. pipeline: one worker with the shipped journeys consumes the same events and delivers
   every send to a local server speaking Postmark's API, with no rate limit;
3. two bare agents in one group on the two workers' events, then one again on the first:
   how the ceiling itself scales to two processes (the ratios are to the mean of the
   two one-agent rates);
4. scale-out, ``pairs`` times: two workers on twice the events over twice the users (the
   same mix), then one worker again on the first events (the ratio is of the mean of
   the two-worker rates to the mean of all the one-worker rates, phase 2's included);
5. latency: a new worker, on its own topics and as many new users as phase 2's, fed
   the same mix at half one worker's rate (the mean of the one-worker rates) with
   wall-clock timestamps; the time from an ``order_completed`` event's timestamp to the
   server receiving its receipt (the order id in the receipt says which event it was);
6. state: a worker's RSS and data directory after every one of ``--users`` users has
   been identified.
"""

from __future__ import annotations

import random
from pathlib import Path
from statistics import fmean
from typing import Any

import orjson

from mailstream.bench.consume_rates import CONSUMED, consume_rate, us_per_event
from mailstream.bench.cpu_time import CpuSpan, StolenSpan
from mailstream.bench.paced_latency import LATENCY_WARMUP, measure_latency
from mailstream.bench.pipeline_site import broker_cores, ceiling_rate, running_bench
from mailstream.bench.run_site import stop_processes
from mailstream.bench.scale_out import Phase, one_worker, scale_out_figures, two_workers
from mailstream.bench.state_size import measure_state, rss_mb
from mailstream.bench.worker_metrics import flush_share, read_samples, total
from mailstream.cli.loadgen import synthetic_events
from mailstream.config.kafka_sections import SecurityConfig


async def bench_pipeline(
    events: int,
    users: int,
    state_users: int,
    latency_seconds: float,
    out: Path,
    latency_rate: float | None = None,
    broker_url: str | None = None,
    security: SecurityConfig | None = None,
    pairs: int = 2,
) -> dict[str, Any]:
    """Run the pipeline scenario's phases; its figures, also written to ``out``."""
    async with running_bench(broker_url, security) as bench:
        one = await bench.topics("bench-one")
        two_topic = await bench.events_topic("bench-two")
        paced = await bench.topics("bench-latency")
        state = await bench.topics("bench-state")
        # Two workers get twice the events, so their phase lasts about as long as one
        # worker's (a short phase is at the mercy of a moment's load on the machine), over
        # twice the users, so each of them has what one worker has alone: as many users,
        # and the same mix. The mix changes as users age: the second 50,000 events of
        # 5,000 users hold 7 % identifies against 17 % in the first.
        two_events, two_users = 2 * events, 2 * users
        print(
            f"producing {events:,} events over {users:,} users, and {two_events:,}"
            f" over {two_users:,} for two workers ...",
            flush=True,
        )
        for topic, n, u in ((one["events"], events, users), (two_topic, two_events, two_users)):
            source = synthetic_events(random.Random(1), u, duplicates=0.02, malformed=0.005)
            await bench.produce(topic, source, n)

        print("ceiling: a bare Faust agent that decodes each event ...", flush=True)
        ceiling_before = await ceiling_rate(bench, one["events"], events, "ceiling-before")

        print("pipeline: one worker with the shipped journeys ...", flush=True)
        worker = bench.start_worker("bench-one", one)
        broker_cpu = bench.broker_cpu()
        worker_cpu = CpuSpan([bench.procs[-1].pid])
        one_stolen = StolenSpan()
        one_run = await consume_rate(
            [worker], events, "the pipeline", [worker_cpu, broker_cpu, one_stolen]
        )
        rate, t0, t1 = one_run.rate, one_run.start, one_run.end
        s = read_samples(worker)
        consumed = total(s, CONSUMED)
        sends_out = sum(1 for t in bench.sink.arrivals if t0 <= t <= t1) / max(t1 - t0, 1e-6)
        rss_pipeline = rss_mb(bench.procs[-1].pid)
        stop_processes(bench.procs)
        # Two bare agents in one group, on the two workers' events: how the ceiling itself
        # scales from one process to two on this machine, beside the same broker.
        print(f"ceiling with two agents, on {two_events:,} events ...", flush=True)
        ceiling_two = await ceiling_rate(bench, two_topic, two_events, "ceiling-two", agents=2)
        # Measured on both sides of the pipeline and of the two agents: the machine's load
        # drifts, and the ratios are to the mean.
        print("ceiling again ...", flush=True)
        ceiling_after = await ceiling_rate(bench, one["events"], events, "ceiling-after")
        ceiling = (ceiling_before + ceiling_after) / 2
        result: dict[str, Any] = {
            "scenario": "pipeline",
            "broker": bench.described,
            "events": events,
            "users": users,
            "ceiling_events_per_s": round(ceiling),
            "ceiling_before_after": f"{ceiling_before:,.0f} / {ceiling_after:,.0f}",
            "pipeline_events_per_s": round(rate),
            "ratio_to_ceiling": round(rate / ceiling, 3),
            "ceiling_two_agents_events_per_s": round(ceiling_two),
            "ceiling_two_agents_ratio_to_one": round(ceiling_two / ceiling, 3),
            "sends_per_s_out": round(sends_out),
            "changelog_records_per_event": round(
                total(s, "mailstream_changelog_records_total") / consumed, 3
            ),
            "batch_seconds_mean": round(
                total(s, "mailstream_ingest_batch_seconds_sum")
                / max(total(s, "mailstream_ingest_batch_seconds_count"), 1),
                4,
            ),
            # how much of the batch time went into making its effects durable
            "flush_share_of_batch": round(flush_share([s]), 2),
            "worker_rss_mb": round(rss_pipeline),
            # what an event costs in CPU, and how much of the two cores the run took
            "worker_cpu_us_per_event": us_per_event(worker_cpu, one_run),
            "broker_cpu_us_per_event": us_per_event(broker_cpu, one_run)
            if bench.embedded
            else None,
            "cores_busy_worker_broker": f"{worker_cpu.seconds / (t1 - t0):.2f} + "
            + broker_cores(bench, broker_cpu, t1 - t0),
            "cpu_stolen_share": round(one_stolen.share, 3),
        }

        # Two workers, then one worker again, ``pairs`` times: like the ceiling, one worker
        # is measured on both sides of every two (the machine's load drifts, even within
        # a run), and the ratio is of the means. Each phase reads the first events (or
        # the two workers') as an app of its own, into topics of its own.
        ones = [Phase(rate, us_per_event(worker_cpu, one_run), one_stolen.share)]
        twos: list[Phase] = []
        for n in range(pairs):
            label = f"{n + 1}/{pairs}"
            print(f"scale-out {label}: two workers on {two_events:,} events ...", flush=True)
            twos.append(await two_workers(bench, f"bench-two-{n}", two_topic, two_events))
            print(f"scale-out {label}: one worker again, after the two ...", flush=True)
            ones.append(await one_worker(bench, f"bench-again-{n}", one["events"], events))
        result["two_workers_events_per_s"] = round(fmean(p.rate for p in twos))
        result.update(scale_out_figures(ones, twos))

        # half the worker's rate, as measured on both sides of the two workers: the
        # machine's speed drifts, and half of one fast moment's rate is not half load
        load = latency_rate or fmean(p.rate for p in ones) / 2
        print(
            f"latency: the mix at {load:,.0f} events/s for {LATENCY_WARMUP:g}s + "
            f"{latency_seconds:g}s ...",
            flush=True,
        )
        result.update(await measure_latency(bench, paced, users, load, latency_seconds))

        result.update(await measure_state(bench, state, state_users))
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        return result
