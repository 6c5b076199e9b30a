"""``mailstream bench http``: events per second through one worker's HTTP endpoint
(``POST /v1/batch``, mailstream.web.track_api), answered only once the broker has them.

Clients on several connections post batches of Segment-shaped track calls as fast as
the answers come; the rate counts the events answered 200 between the first request
and the last answer. The worker applies what it takes meanwhile (with no workflows, so
that nothing is sent), as a worker that takes HTTP traffic does.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from mailstream.bench.run_site import Site, wait_until
from mailstream.config.kafka_sections import SecurityConfig
from mailstream.kafka.embedded_broker import free_port

WRITE_KEY = "bench-write-key-0123456789"


def _batch(start: int, size: int, users: int) -> bytes:
    calls = [
        {
            "type": "track",
            "userId": f"user-{i % users}",
            "event": "page_viewed",
            "messageId": f"http-{i:09d}",
            "properties": {"path": f"/products/{i % 97}", "referrer": "https://example.com/"},
        }
        for i in range(start, start + size)
    ]
    return orjson.dumps({"batch": calls})


async def _post_all(
    url: str, events: int, batch: int, connections: int, first: int = 0
) -> dict[str, Any]:
    """Post ``events`` (numbered from ``first``) in batches over ``connections``; the
    rate and the request latencies."""
    end = first + events
    bodies = [_batch(s, min(batch, end - s), 5000) for s in range(first, end, batch)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {WRITE_KEY}", "Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            sent = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                answer = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"the worker answered {resp.status}: {answer[:300]!r}")
            latencies.append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "per_s": events / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


async def bench_http(
    events: int,
    out: Path,
    broker_url: str | None = None,
    security: SecurityConfig | None = None,
    batch: int = 100,
    connections: int = 8,
) -> dict[str, Any]:
    """Run the http scenario; its figures, also written to ``out``."""
    root = Path(tempfile.mkdtemp(prefix="mailstream-bench-"))
    site = Site(root, broker_url, security)
    procs = []
    try:
        site.broker.start()
        name = "bench-http"
        port = free_port()
        config = {
            "app_id": site.apart(name),
            "broker": site.broker_config(),
            "topics": await site.topics(name),
            "workflows": {},
            "http_ingest": {
                "enabled": True,
                "events_per_second": 1_000_000,
                "burst": 1_000_000,
                "max_body_bytes": 4_000_000,
            },
        }
        procs.append(site.spawn_worker(name, config, port, MAILSTREAM_WRITE_KEY=WRITE_KEY))
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            import urllib.request

            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:  # noqa: S310 - loopback
                return bool(orjson.loads(resp.read())["ready"])

        await wait_until(ready, 120, "the worker to be ready")
        warm = min(events // 10, 2000)
        await _post_all(f"{base}/v1/batch", warm, batch, connections)  # connections, caches
        print(
            f"http: {events:,} events in batches of {batch} on {connections} connections ...",
            flush=True,
        )
        run = await _post_all(f"{base}/v1/batch", events, batch, connections, first=warm)
        result = {
            "scenario": "http",
            "broker": site.described,
            "events": events,
            "batch": batch,
            "connections": connections,
            "http_events_per_s": round(run["per_s"]),
            "request_p50_ms": round(run["p50_ms"], 1),
            "request_p99_ms": round(run["p99_ms"], 1),
        }
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        return result
    finally:
        await site.close(procs)
