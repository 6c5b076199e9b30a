"""The pipeline's scale-out phases: two workers on twice the events, then one worker
again, and the figures comparing them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from statistics import fmean
from typing import Any, NamedTuple

from mailstream.bench.consume_rates import consume_rate, us_per_event
from mailstream.bench.cpu_time import CpuSpan, StolenSpan
from mailstream.bench.pipeline_site import Bench, broker_cores
from mailstream.bench.run_site import stop_processes
from mailstream.bench.worker_metrics import flush_share, read_samples


class Phase(NamedTuple):
    """One scale-out phase: its rate, and what it shows of the machine meanwhile."""

    rate: float
    us_per_event: int | None  # the workers' CPU per event
    stolen: float  # the share of the machine's CPU its hypervisor gave elsewhere
    flush_share: float = 0.0  # two workers: their flushes' share of the batch time
    cores: str = ""  # two workers: the cores they and the broker kept busy
    bench_cores: float = 0.0  # two workers: the bench's own process beside them


async def two_workers(bench: Bench, name: str, events_topic: str, events: int) -> Phase:
    """Two workers of a new app on ``events_topic``, until they have consumed ``events``."""
    topics = await bench.topics(name, events_from=events_topic)
    urls = [bench.start_worker(name, topics, i) for i in range(2)]
    workers_cpu = CpuSpan([proc.pid for proc in bench.procs[-2:]])
    broker_cpu = bench.broker_cpu()
    own_cpu = CpuSpan([os.getpid()])  # the provider server and the polling
    stolen = StolenSpan()
    run = await consume_rate(
        urls, events, "two workers", [workers_cpu, broker_cpu, own_cpu, stolen]
    )
    seconds = run.end - run.start
    phase = Phase(
        run.rate,
        us_per_event(workers_cpu, run),
        stolen.share,
        flush_share([read_samples(url) for url in urls]),
        f"{workers_cpu.seconds / seconds:.2f}+{broker_cores(bench, broker_cpu, seconds)}",
        # what the two workers could not have: the bench's own process beside them
        own_cpu.seconds / seconds,
    )
    stop_processes(bench.procs)
    return phase


async def one_worker(
    bench: Bench,
    name: str,
    events_topic: str,
    events: int,
    settings: dict[str, Any] | None = None,
) -> Phase:
    """One worker of a new app on ``events_topic`` (with ``settings`` added to its
    config), until it has consumed ``events``."""
    topics = await bench.topics(name, events_from=events_topic)
    url = bench.start_worker(name, topics, settings=settings)
    cpu = CpuSpan([bench.procs[-1].pid])
    stolen = StolenSpan()
    run = await consume_rate([url], events, "one worker again", [cpu, stolen])
    stop_processes(bench.procs)
    return Phase(run.rate, us_per_event(cpu, run), stolen.share)


def scale_out_figures(ones: Sequence[Phase], twos: Sequence[Phase]) -> dict[str, Any]:
    """The scale-out figures of one-worker phases on both sides of each two-worker one
    (one, two, one, two, one...): each phase's, in order, and the ratio of the means."""

    def each(values: Iterator[Any]) -> str:
        return " / ".join(str(v) for v in values)

    def ratio(part: float, whole: float) -> str:
        # a phase over before the bench's second reading has no rate (0): too few events
        return f"{part / whole:.3f}" if whole > 0 else "n/a"

    return {
        "two_workers_each": each(f"{p.rate:,.0f}" for p in twos),
        # each two against the mean of the ones on both sides of it
        "two_workers_ratio_each": each(
            ratio(p.rate, (ones[n].rate + ones[n + 1].rate) / 2) for n, p in enumerate(twos)
        ),
        "two_workers_cpu_us_per_event": each(p.us_per_event for p in twos),
        "two_workers_flush_share_of_batch": each(f"{p.flush_share:.2f}" for p in twos),
        "two_workers_cores_busy_workers_broker": each(p.cores for p in twos),
        "two_workers_bench_process_cores_busy": each(f"{p.bench_cores:.2f}" for p in twos),
        "two_workers_cpu_stolen_share": each(round(p.stolen, 3) for p in twos),
        "one_worker_before_after": each(f"{p.rate:,.0f}" for p in ones),
        # what an event cost it each time: the machine's speed drifts with no CPU stolen
        "one_worker_cpu_us_per_event_before_after": each(p.us_per_event for p in ones),
        "one_worker_again_cpu_stolen_share": each(round(p.stolen, 3) for p in ones[1:]),
        "two_workers_ratio_to_one": (
            round(fmean(p.rate for p in twos) / one, 3)
            if (one := fmean(p.rate for p in ones)) > 0
            else None
        ),
    }
