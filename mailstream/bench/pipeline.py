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
6. state: a worker's RSS and data directory after every one of ``--state-users`` users
   has been identified.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any, NamedTuple, Protocol

import orjson

from mailstream.bench.command import (
    Site,
    _quantile,
    _samples,
    _total,
    _wait,
    stop_processes,
)
from mailstream.cli.loadgen import synthetic_events
from mailstream.kafka.embedded_broker import free_port
from mailstream.producer import EventProducer

PARTITIONS = 4
# Seconds of traffic at the latency phase's rate before its receipts count: the worker
# there has just started, and its first second shows that rather than the steady state.
# The warm-up's own p99 and largest are printed too.
LATENCY_WARMUP = 3.0
ORDER = re.compile(r"Your receipt for order (\w+)")


class Sink:
    """Accepts every Postmark-style send on 127.0.0.1; notes when each arrived and, for
    receipts, the order they are for.

    It answers HTTP/1.1 itself (keep-alive, bodies with a Content-Length) rather than
    through aiohttp's server: it runs on the same two cores as the workers it measures,
    and each send cost it about 115 µs of CPU there against about 30 µs here, some 0.07
    of a core at the two workers' rate."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []  # wall clock, seconds
        self.receipts: dict[str, float] = {}  # order id -> arrival (wall clock)
        self.port = free_port()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accept(self, body: bytes) -> bytes:
        """Note the send in ``body``; the JSON answer to it."""
        now = time.time()
        self.arrivals.append(now)
        match = ORDER.search(orjson.loads(body).get("Subject", ""))
        if match:
            self.receipts.setdefault(match.group(1), now)
        return orjson.dumps({"ErrorCode": 0, "Message": "OK", "MessageID": secrets.token_hex(8)})

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _SinkProtocol(self), "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _SinkProtocol(asyncio.Protocol):
    """One connection to the sink: requests one after another, each with its body."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = _content_length(self.buffer[:end])
            if length is None:  # no body this sink can find the end of
                self.transport.write(b"HTTP/1.1 411 Length Required\r\nConnection: close\r\n\r\n")
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return  # the rest of the body is still coming
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            reply = self.sink.accept(body)
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply)
            )


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a request's head (its lines up to the blank one)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


class Bench(Site):
    """The broker, the sink and the workers of one run, and where their files go."""

    def __init__(self, root: Path, broker_url: str | None = None) -> None:
        super().__init__(root, broker_url)
        self.sink = Sink()
        self.procs: list[subprocess.Popen[bytes]] = []

    def broker_cpu(self) -> CpuSpan:
        """The broker's CPU time, when the bench started it (else none is measured)."""
        process = self.broker.process
        return CpuSpan([process.pid] if process is not None else [])

    async def produce(
        self, topic: str, pairs: Iterator[tuple[bytes | None, bytes]], n: int
    ) -> None:
        async with EventProducer(self.broker.bootstrap_servers, topic, linger_ms=20) as producer:
            for _ in range(n):
                key, value = next(pairs)
                await producer.send_raw(key, value)
            await producer.flush()

    def start_worker(self, name: str, topics: dict[str, str], index: int = 0) -> str:
        """Start a worker of app ``name``; returns its web URL."""
        port = free_port()
        config = {
            "app_id": self.apart(name),
            "broker": self.broker_config(),
            "topics": topics,
            "delivery": {"provider": "postmark", "rate_limit": 1_000_000, "concurrency": 64},
            "providers": {"postmark": {"base_url": self.sink.url}},
        }
        self.procs.append(
            self.spawn_worker(f"{name}-{index}", config, port, POSTMARK_SERVER_TOKEN="bench")
        )
        return f"http://127.0.0.1:{port}"


CONSUMED = "mailstream_events_consumed_total"
# rebalances a worker has completed, recovery included (Faust's own histogram)
REBALANCES = "faust_rebalance_done_latency_seconds_count"


def _sum(urls: list[str], name: str, **labels: str) -> float:
    return sum(_total(_samples(url, name), name, **labels) for url in urls)


def _flush_share(workers: list[dict[str, list[tuple[dict[str, str], float]]]]) -> float:
    """The share of the ingest batches' time spent in their flushes, over the workers'
    samples."""
    flushes = sum(_total(s, "mailstream_ingest_flush_seconds_sum") for s in workers)
    batches = sum(_total(s, "mailstream_ingest_batch_seconds_sum") for s in workers)
    return flushes / max(batches, 1e-9)


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuSpan:
    """CPU time used by some processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.seconds = 0.0

    def start(self) -> None:
        self.seconds = -_cpu_seconds(self.pids)

    def stop(self) -> None:
        self.seconds += _cpu_seconds(self.pids)


class StolenSpan:
    """The share of this machine's CPU time that its hypervisor gave to other machines
    (steal, from /proc/stat) between ``start()`` and ``stop()``: on a shared host the
    phases of one run can get very different machines."""

    def __init__(self) -> None:
        self.share = 0.0
        self._at = (0, 0)

    def start(self) -> None:
        self._at = _host_ticks()

    def stop(self) -> None:
        (stolen, total), (stolen_before, total_before) = _host_ticks(), self._at
        self.share = (stolen - stolen_before) / max(total - total_before, 1)


def _host_ticks() -> tuple[int, int]:
    """(stolen, all) CPU ticks of this machine so far; (0, 0) where /proc/stat is not."""
    try:
        return cpu_ticks(Path("/proc/stat").read_text())
    except OSError:
        return 0, 0


def cpu_ticks(stat: str) -> tuple[int, int]:
    """(stolen, all) ticks from the first line of /proc/stat: user, nice, system, idle,
    iowait, irq, softirq, steal (guest time is counted in user already). Kernels
    before 2.6.11 have no steal field."""
    fields = stat.splitlines()[0].split()
    if fields[:1] != ["cpu"]:
        raise ValueError(f"not a /proc/stat cpu line: {stat[:40]!r}")
    ticks = [int(f) for f in fields[1:9]]
    ticks += [0] * (8 - len(ticks))
    return ticks[7], sum(ticks)


class Span(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


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
            counts = [_sum([url], CONSUMED) for url in urls]
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


def _cores(bench: Bench, cpu: CpuSpan, seconds: float) -> str:
    """How much of a core the broker took, when the bench started it."""
    return f"{cpu.seconds / seconds:.2f}" if bench.embedded else "n/a"


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


async def ceiling_rate(
    bench: Bench, topic: str, events: int, name: str = "ceiling", agents: int = 1
) -> float:
    """Events per second of ``agents`` bare Faust agents (mailstream.bench.ceiling) in one
    group, sharing the partitions of ``topic``: from the first event any of them decoded
    to the last."""
    dirs = [bench.root / f"{name}-{i}" for i in range(agents)]
    procs = []
    for i, datadir in enumerate(dirs):
        datadir.mkdir()
        with open(bench.root / f"{name}-{i}.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mailstream.bench.ceiling",
                        bench.broker.bootstrap_servers,
                        topic,
                        str(PARTITIONS),
                        # its own group: each run reads from the start
                        bench.apart(f"bench-{name}"),
                        str(datadir),
                        "embedded" if bench.embedded else "existing",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    bench.procs.extend(procs)

    def spans() -> list[dict[str, float]]:
        files = [d / "span.json" for d in dirs]
        return [orjson.loads(f.read_bytes()) for f in files if f.exists()]

    def done() -> bool:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a ceiling agent exited; see {bench.root}/{name}-*.log")
        return sum(span["n"] for span in spans()) >= events

    await _wait(done, 600, "the ceiling agents")
    stop_processes(procs)
    decoded = spans()
    first = min(span["first"] for span in decoded)
    last = max(span["last"] for span in decoded)
    return events / max(last - first, 1e-6)


def _ready(web_url: str) -> bool:
    """The worker at ``web_url`` has joined, recovered its tables and owns every partition."""
    try:
        with urllib.request.urlopen(f"{web_url}/health", timeout=2) as resp:
            health = orjson.loads(resp.read())
    except OSError:
        return False
    return bool(health["ready"]) and len(health["partitions"]) == PARTITIONS


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
    produced: dict[str, float] = {}
    warm: set[str] = set()  # the orders of the warm-up
    async with EventProducer(bench.broker.bootstrap_servers, topic, linger_ms=1) as producer:
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
    await _wait(lambda: all(o in bench.sink.receipts for o in produced), 60, "the latency receipts")
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


def send_path(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """Where the latency goes, from the worker's own histogram: the p50 and p99 of the
    time from the event to each stage of a send (bucket upper bounds, in ms)."""
    out: dict[str, Any] = {}
    for stage in ("written", "taken", "queued", "calling"):
        bounds = [
            1000 * _quantile(samples, "mailstream_send_path_seconds", q, stage=stage)
            for q in (0.5, 0.99)
        ]
        out[f"path_{stage}_p50_p99_le_ms"] = " / ".join(f"{b:g}" for b in bounds)
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _identifies(users: int) -> Iterator[tuple[bytes | None, bytes]]:
    now = int(time.time() * 1000)
    for n in range(users):
        user = f"user-{n}"
        event = {
            "event_id": f"state-{n}",
            "event_type": "identify",
            "user_id": user,
            "timestamp": now,
            "payload": {"email": f"{user}@example.com", "first_name": f"User{n}"},
        }
        yield user.encode(), orjson.dumps(event)


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
        _flush_share([_samples(url) for url in urls]),
        f"{workers_cpu.seconds / seconds:.2f}+{_cores(bench, broker_cpu, seconds)}",
        # what the two workers could not have: the bench's own process beside them
        own_cpu.seconds / seconds,
    )
    stop_processes(bench.procs)
    return phase


async def one_worker(bench: Bench, name: str, events_topic: str, events: int) -> Phase:
    """One worker of a new app on ``events_topic``, until it has consumed ``events``."""
    url = bench.start_worker(name, await bench.topics(name, events_from=events_topic))
    cpu = CpuSpan([bench.procs[-1].pid])
    stolen = StolenSpan()
    run = await consume_rate([url], events, "one worker again", [cpu, stolen])
    stop_processes(bench.procs)
    return Phase(run.rate, us_per_event(cpu, run), stolen.share)


def _scale_out(ones: Sequence[Phase], twos: Sequence[Phase]) -> dict[str, Any]:
    """The scale-out figures of one-worker phases on both sides of each two-worker one
    (one, two, one, two, one...): each phase's, in order, and the ratio of the means."""

    def each(values: Iterator[Any]) -> str:
        return " / ".join(str(v) for v in values)

    return {
        "two_workers_each": each(f"{p.rate:,.0f}" for p in twos),
        # each two against the mean of the ones on both sides of it
        "two_workers_ratio_each": each(
            f"{p.rate / ((ones[n].rate + ones[n + 1].rate) / 2):.3f}" for n, p in enumerate(twos)
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
        "two_workers_ratio_to_one": round(
            fmean(p.rate for p in twos) / fmean(p.rate for p in ones), 3
        ),
    }


async def bench_pipeline(
    events: int,
    users: int,
    state_users: int,
    latency_seconds: float,
    out: Path,
    latency_rate: float | None = None,
    broker_url: str | None = None,
    pairs: int = 2,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mailstream-bench-"))
    bench = Bench(root, broker_url)
    try:
        bench.broker.start()
        await bench.sink.start()
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
        s = _samples(worker)
        consumed = _total(s, CONSUMED)
        sends_out = sum(1 for t in bench.sink.arrivals if t0 <= t <= t1) / max(t1 - t0, 1e-6)
        rss_pipeline = _rss_mb(bench.procs[-1].pid)
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
                _total(s, "mailstream_changelog_records_total") / consumed, 3
            ),
            "batch_seconds_mean": round(
                _total(s, "mailstream_ingest_batch_seconds_sum")
                / max(_total(s, "mailstream_ingest_batch_seconds_count"), 1),
                4,
            ),
            # how much of the batch time went into making its effects durable
            "flush_share_of_batch": round(_flush_share([s]), 2),
            "worker_rss_mb": round(rss_pipeline),
            # what an event costs in CPU, and how much of the two cores the run took
            "worker_cpu_us_per_event": us_per_event(worker_cpu, one_run),
            "broker_cpu_us_per_event": us_per_event(broker_cpu, one_run)
            if bench.embedded
            else None,
            "cores_busy_worker_broker": f"{worker_cpu.seconds / (t1 - t0):.2f} + "
            + _cores(bench, broker_cpu, t1 - t0),
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
        result.update(_scale_out(ones, twos))

        # half the worker's rate, as measured on both sides of the two workers: the
        # machine's speed drifts, and half of one fast moment's rate is not half load
        load = latency_rate or fmean(p.rate for p in ones) / 2
        print(
            f"latency: the mix at {load:,.0f} events/s for {LATENCY_WARMUP:g}s + "
            f"{latency_seconds:g}s ...",
            flush=True,
        )
        # New users on a new worker, like the pipeline's at its start: users' records grow
        # as their events come in (the deduplication window, the decisions kept), and on
        # the pipeline's users, aged by its events, an event cost a paced worker about 5 %
        # more CPU: half the pipeline's rate was a little more than half load there.
        worker = bench.start_worker("bench-latency", paced)
        await _wait(lambda: _ready(worker), 120, "the latency worker to be ready")
        latency_cpu = CpuSpan([bench.procs[-1].pid])
        latency_broker = bench.broker_cpu()
        latency_stolen = StolenSpan()
        rebalances_before = _sum([worker], REBALANCES)
        latency_cpu.start()
        latency_broker.start()
        latency_stolen.start()
        started = time.monotonic()
        result.update(
            await latency(bench, paced["events"], users, load, latency_seconds, LATENCY_WARMUP)
        )
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
        result["latency_rebalances"] = int(_sum([worker], REBALANCES) - rebalances_before)
        result.update(send_path(_samples(worker)))
        stop_processes(bench.procs)

        print(f"state: identifying {state_users:,} users ...", flush=True)
        await bench.produce(state["events"], _identifies(state_users), state_users)
        url = bench.start_worker("bench-state", state)
        await consume_rate([url], state_users, "the state worker")
        result["state_users"] = state_users
        result["state_worker_rss_mb"] = round(_rss_mb(bench.procs[-1].pid))
        result["state_disk_mb"] = round(_disk_mb(root / "bench-state-0"))
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        return result
    finally:
        await bench.sink.stop()
        await bench.close(bench.procs)
