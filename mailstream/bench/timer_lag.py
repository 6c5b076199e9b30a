"""``mailstream bench timers``: how late waits fire, and what a tick costs, with many
timers pending."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from mailstream.bench.run_site import Site, wait_until
from mailstream.bench.worker_metrics import quantile, read_samples, total
from mailstream.config.kafka_sections import SecurityConfig
from mailstream.kafka.embedded_broker import free_port
from mailstream.producer import EventProducer


async def bench_timers(
    pending: int,
    probes: int,
    wait_s: float,
    out: Path,
    broker_url: str | None = None,
    security: SecurityConfig | None = None,
) -> dict[str, Any]:
    """Run the timers scenario; its figures, also written to ``out``."""
    root = Path(tempfile.mkdtemp(prefix="mailstream-bench-"))
    site = Site(root, broker_url, security)
    worker: subprocess.Popen[bytes] | None = None
    port = free_port()
    web_url = f"http://127.0.0.1:{port}"
    config: dict[str, Any] = {
        "app_id": site.apart("bench-timers"),
        "broker": site.broker_config(),
        "workflows": {
            "hold": {"trigger": {"event": "hold"}, "entry": "always", "steps": [{"wait": "6h"}]},
            "probe": {
                "trigger": {"event": "probe"},
                "entry": "always",
                "steps": [{"wait": f"{wait_s}s"}, "exit"],
            },
        },
    }
    try:
        site.broker.start()
        config["topics"] = topics = await site.topics("bench-timers")
        worker = site.spawn_worker("worker", config, port)

        def ready() -> bool:
            with urllib.request.urlopen(f"{web_url}/health", timeout=2) as resp:
                return bool(orjson.loads(resp.read())["ready"])

        await wait_until(ready, 90, "the worker")
        print(f"loading {pending:,} pending timers ...", flush=True)
        started = time.monotonic()
        producing = EventProducer(site.kafka, topics["events"], linger_ms=5)
        async with producing as producer:
            for i in range(pending):
                await producer.emit("hold", f"held-{i}")
            await producer.flush()

            def loaded() -> bool:
                s = read_samples(web_url)
                name = "mailstream_workflow_transitions_total"
                return total(s, name, workflow="hold", transition="enrolled") >= pending

            await wait_until(loaded, 1800, f"{pending} enrollments")
            load_s = time.monotonic() - started
            print(f"  loaded in {load_s:.1f}s; now {probes} probe waits of {wait_s}s", flush=True)
            before = read_samples(web_url)
            ticks_before = total(before, "mailstream_timer_tick_seconds_count")
            tick_sum_before = total(before, "mailstream_timer_tick_seconds_sum")
            for i in range(probes):
                await producer.emit("probe", f"probe-{i}")
                await producer.flush()
                await asyncio.sleep(0.05)

        def fired() -> bool:
            return total(read_samples(web_url), "mailstream_timers_fired_total") >= probes

        await wait_until(fired, 120 + wait_s, "the probe timers")
        s = read_samples(web_url)
        ticks = total(s, "mailstream_timer_tick_seconds_count") - ticks_before
        tick_mean = (total(s, "mailstream_timer_tick_seconds_sum") - tick_sum_before) / max(
            ticks, 1
        )
        lag_count = total(s, "mailstream_timer_lag_seconds_count")
        result = {
            "scenario": "timers",
            "broker": site.described,
            "pending_timers": pending,
            "load_seconds": round(load_s, 1),
            "probe_timers_fired": int(lag_count),
            "lag_mean_ms": round(
                1000 * total(s, "mailstream_timer_lag_seconds_sum") / lag_count, 1
            ),
            "lag_p50_le_ms": 1000 * quantile(s, "mailstream_timer_lag_seconds", 0.5),
            "lag_p99_le_ms": 1000 * quantile(s, "mailstream_timer_lag_seconds", 0.99),
            "ticks_during_probes": int(ticks),
            "tick_mean_ms": round(1000 * tick_mean, 2),
            "tick_p99_le_ms": 1000 * quantile(s, "mailstream_timer_tick_seconds", 0.99),
        }
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        return result
    finally:
        await site.close([worker] if worker is not None else [])
