"""``mailstream bench delivery``: sends per second to a local provider with no limit, and
how closely a configured rate limit is kept.

A local server speaking Postmark's send API (``POST /email``) records when each message
arrives; a worker delivers pre-produced send commands to it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from mailstream.bench.provider_sink import Sink
from mailstream.bench.run_site import Site, stop_processes
from mailstream.config.kafka_sections import SecurityConfig
from mailstream.core.cluster_trust import ClusterKey
from mailstream.delivery.send_command import encode_send_command
from mailstream.kafka.embedded_broker import free_port
from mailstream.kafka.embedded_quirks import idempotence_supported


def _command(i: int) -> dict[str, Any]:
    user = f"user-{i % 5000}"
    return {
        "send_id": f"bench-{i:08d}",
        "tenant_id": "default",
        "user_id": user,
        "to": f"{user}@example.com",
        "category": "marketing" if i % 3 else "transactional",
        "priority": "normal",
        "subject": "Your weekly digest",
        "text": "Hello\n" * 40,
        "html": "<p>Hello</p>" * 40,
        "headers": {"X-Mailstream-Send-Id": f"bench-{i:08d}", "X-Mailstream-User-Id": user},
    }


def busiest_second(times: list[float]) -> int:
    """The most arrivals within any one-second window."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def first_and_last_fifth(times: list[float]) -> tuple[float, float]:
    """Arrivals per second over the first fifth of the (sorted) arrival times and over
    the last: whether delivery keeps its pace as the sends it has made pile up."""
    n = len(times) // 5
    if n < 2:
        return float("nan"), float("nan")

    def rate(part: list[float]) -> float:
        return (len(part) - 1) / max(part[-1] - part[0], 1e-6)

    return rate(times[:n]), rate(times[-n:])


async def _run(site: Site, name: str, sends: int, rate: float | None) -> dict[str, Any]:
    """Deliver ``sends`` commands with one worker; the arrival times at the sink."""
    root = site.root
    sink = Sink()
    await sink.start()
    topics = await site.topics(name)
    producer = AIOKafkaProducer(
        **site.kafka.client_kwargs(),
        linger_ms=20,
        acks="all",
        # not on the embedded broker, which lacks InitProducerId (also given as --broker)
        enable_idempotence=await idempotence_supported(site.kafka),
    )
    await producer.start()
    cluster = ClusterKey(site.cluster_secret)  # the workers obey signed commands only
    try:
        for i in range(sends):
            c = _command(i)
            key, value = encode_send_command(cluster, c)
            await producer.send(topics[f"sends_{c['category']}"], value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    port = free_port()
    config = {
        "app_id": site.apart(name),
        "broker": site.broker_config(),
        "topics": topics,
        "delivery": {
            "provider": "postmark",
            "rate_limit": rate or 1_000_000,
            "concurrency": 64,
        },
        "providers": {"postmark": {"base_url": sink.url}},
    }
    proc = site.spawn_worker(name, config, port, POSTMARK_SERVER_TOKEN="bench")
    try:
        deadline = time.monotonic() + 600
        while len(sink.arrivals) < sends and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited; see {root / (name + '.log')}")
            await asyncio.sleep(0.2)
        if len(sink.arrivals) < sends:
            raise RuntimeError(f"only {len(sink.arrivals)} of {sends} sends arrived in time")
        times = sorted(sink.arrivals)
        # after the first second, which holds the initial burst as well as the rate
        later = [t for t in times if t >= times[0] + 1.0]
        return {
            "per_s": (len(times) - 1) / max(times[-1] - times[0], 1e-6),
            "steady_per_s": (len(later) - 1) / max(later[-1] - later[0], 1e-6)
            if len(later) > 1
            else float("nan"),
            "busiest_second": busiest_second(times),
            "first_and_last_fifth": first_and_last_fifth(times),
        }
    finally:
        stop_processes([proc])
        await sink.stop()


async def bench_delivery(
    sends: int,
    rate: float,
    out: Path,
    broker_url: str | None = None,
    security: SecurityConfig | None = None,
) -> dict[str, Any]:
    """Run the delivery scenario; its figures, also written to ``out``."""
    root = Path(tempfile.mkdtemp(prefix="mailstream-bench-"))
    site = Site(root, broker_url, security)
    try:
        site.broker.start()
        print(f"no limit: {sends:,} sends to a local provider ...", flush=True)
        free = await _run(site, "bench-free", sends, None)
        limited_sends = max(int(rate * 20), 100)
        print(f"limited: {limited_sends:,} sends at {rate:g}/s ...", flush=True)
        limited = await _run(site, "bench-limited", limited_sends, rate)
        result = {
            "scenario": "delivery",
            "broker": site.described,
            "provider": "postmark API on a local server",
            "sends": sends,
            "sends_per_s_no_limit": round(free["per_s"]),
            # a queue that slows down as sends pile up shows here
            "no_limit_first_last_fifth_per_s": " / ".join(
                f"{r:,.0f}" for r in free["first_and_last_fifth"]
            ),
            "rate_limit_per_s": rate,
            "sends_per_s_limited": round(limited["per_s"], 1),
            "steady_per_s_limited": round(limited["steady_per_s"], 1),
            "rate_accuracy": round(limited["steady_per_s"] / rate, 3),
            # counted at the server, so network jitter adds a little to the bucket's bound
            "busiest_second_limited": limited["busiest_second"],
            "rate_plus_burst": rate * 2,  # the default burst is one second's worth
        }
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        return result
    finally:
        await site.close([])
