"""How fast workers consume events, from their counters polled while they run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import NamedTuple

from mailstream.bench.cpu_time import CpuSpan, Span
from mailstream.bench.worker_metrics import total_over

CONSUMED = "mailstream_events_consumed_total"

# How often consume_rate reads the workers' counters. Its figure is the slope through
# the readings, so a run of a few seconds is not off by a reading's interval at each end.
POLL_SECONDS = 0.1


class Consumption(NamedTuple):
    rate: float  # events per second (steady_rate)
    start: float  # the first reading with events consumed (wall clock)
    end: float  # the first reading with all of them
    events: float  # consumed from start to end


async def consume_rate(
    urls: list[str], events: int, what: str, cpu: Sequence[Span] = ()
) -> Consumption:
    """Wait until the workers at ``urls`` have consumed ``events``. Each of ``cpu``
    measures from the first reading with events consumed to the first with all of
    them."""
    readings: list[tuple[float, list[float]]] = []  # (time, each worker's count)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        try:
            counts = [total_over([url], CONSUMED) for url in urls]
        except OSError:  # a worker's web server is not up yet
            await asyncio.sleep(0.5)
            continue
        now, consumed = time.time(), sum(counts)
        if consumed > 0 and not readings:
            for span in cpu:
                span.start()
        if consumed > 0:
            readings.append((now, counts))
        if consumed >= events:
            for span in cpu:
                span.stop()
            start, first = readings[0][0], sum(readings[0][1])
            return Consumption(concurrent_rate(readings, events), start, now, consumed - first)
        await asyncio.sleep(POLL_SECONDS)
    raise RuntimeError(f"{what} did not consume {events} events in time")


def us_per_event(cpu: CpuSpan, run: Consumption) -> int | None:
    """Microseconds of CPU ``cpu`` measured per event counted over the same ``run``; None
    when every event was in by the first reading (too few events to measure this)."""
    return round(1e6 * cpu.seconds / run.events) if run.events else None


def concurrent_rate(readings: Sequence[tuple[float, Sequence[float]]], events: int) -> float:
    """Events per second while every worker was consuming, from (time, each worker's
    count so far) readings, the last of which has all ``events``: the slope through the
    summed counts from the first reading in which every worker had consumed some, up to
    (not including) the first in which one had consumed all it would. One worker joins
    or recovers its tables later than the other, or finishes its partitions sooner, and
    the other works alone meanwhile: that is not the rate of the two. With one worker,
    or too few readings in that span, it is ``steady_rate``."""
    summed = [(t, float(sum(counts))) for t, counts in readings]
    finals = readings[-1][1]
    start = next((i for i, (_, c) in enumerate(readings) if all(n > 0 for n in c)), 0)
    done = [any(n >= f for n, f in zip(counts, finals, strict=True)) for _, counts in readings]
    end = done.index(True)
    window = summed[start:end]
    if len(finals) > 1 and len(window) >= 3 and window[-1][0] > window[0][0]:
        return _slope(window)
    return steady_rate(summed, events)


def _slope(readings: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of count against time."""
    mean_t = sum(t for t, _ in readings) / len(readings)
    mean_n = sum(n for _, n in readings) / len(readings)
    spread = sum((t - mean_t) ** 2 for t, _ in readings)
    return sum((t - mean_t) * (n - mean_n) for t, n in readings) / spread


def steady_rate(readings: Sequence[tuple[float, float]], events: int) -> float:
    """Events per second from (time, events consumed so far) readings, the last of which
    has all ``events``: the least-squares slope through the readings taken while the
    consumers were between the first and the last event (the first and last readings
    can each be up to a polling interval late); from the first reading to the last when
    there are too few of those."""
    inner = [(t, n) for t, n in readings if 0 < n < events]
    if len(inner) >= 3 and inner[-1][0] > inner[0][0]:
        return _slope(inner)
    (t0, n0), (t1, n1) = readings[0], readings[-1]
    return (n1 - n0) / max(t1 - t0, 1e-6)
