"""``mailstream bench``: measurements that start everything they need and print figures.

Scenarios: ``ingest`` (the engine against a bare Faust agent on the same topic),
``timers`` (how late waits fire, and what a tick costs, with many pending timers) and
``delivery`` (sends per second to a local provider, and how well a rate limit holds;
in mailstream.bench_delivery).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mailstream.broker import EmbeddedBroker, ensure_topics, free_port
from mailstream.producer import EventProducer


def _samples(web_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"{web_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def _quantile(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` of a Prometheus histogram."""
    buckets = sorted(
        (float(lab["le"]), v) for lab, v in samples.get(f"{name}_bucket", []) if "le" in lab
    )
    count = buckets[-1][1] if buckets else 0.0
    for bound, cumulative in buckets:
        if count and cumulative >= q * count:
            return bound
    return float("nan")


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop processes the bench started, by pid: politely, then not."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def clean_up(procs: list[subprocess.Popen[bytes]], broker: EmbeddedBroker, root: Path) -> None:
    """Stop every process the bench started, then the broker; remove its files."""
    stop_processes(procs)
    broker.stop()
    shutil.rmtree(root, ignore_errors=True)


async def _wait(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


async def bench_timers(pending: int, probes: int, wait_s: float, out: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mailstream-bench-"))
    broker = EmbeddedBroker("127.0.0.1", free_port(), log_path=root / "broker.log")
    worker: subprocess.Popen[bytes] | None = None
    port = free_port()
    web_url = f"http://127.0.0.1:{port}"
    config = {
        "app_id": "bench",
        "broker": {"url": "", "session_timeout": "3s", "heartbeat_interval": "500ms"},
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
        broker.start()
        config["broker"]["url"] = broker.url  # type: ignore[index]
        (root / "mailstream.yaml").write_text(yaml.safe_dump(config))
        names = [
            "mailstream." + n
            for n in ("events", "dlq", "sends.transactional", "sends.marketing", "feedback")
        ]
        await ensure_topics(broker.bootstrap_servers, names, 4)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
        env.update(
            MAILSTREAM_CONFIG=str(root / "mailstream.yaml"),
            MAILSTREAM_WEB_PORT=str(port),
            MAILSTREAM_DATA_DIR=str(root / "data"),
            MAILSTREAM_UNSUBSCRIBE_SECRET=secrets.token_urlsafe(24),
            MAILSTREAM_ADMIN_TOKEN=secrets.token_urlsafe(18),
        )
        with open(root / "worker.log", "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "mailstream", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            with urllib.request.urlopen(f"{web_url}/health", timeout=2) as resp:
                return bool(orjson.loads(resp.read())["ready"])

        await _wait(ready, 90, "the worker")
        print(f"loading {pending:,} pending timers ...", flush=True)
        started = time.monotonic()
        async with EventProducer(broker.bootstrap_servers, linger_ms=5) as producer:
            for i in range(pending):
                await producer.emit("hold", f"held-{i}")
            await producer.flush()

            def loaded() -> bool:
                s = _samples(web_url)
                name = "mailstream_workflow_transitions_total"
                return _total(s, name, workflow="hold", transition="enrolled") >= pending

            await _wait(loaded, 1800, f"{pending} enrollments")
            load_s = time.monotonic() - started
            print(f"  loaded in {load_s:.1f}s; now {probes} probe waits of {wait_s}s", flush=True)
            before = _samples(web_url)
            ticks_before = _total(before, "mailstream_timer_tick_seconds_count")
            tick_sum_before = _total(before, "mailstream_timer_tick_seconds_sum")
            for i in range(probes):
                await producer.emit("probe", f"probe-{i}")
                await producer.flush()
                await asyncio.sleep(0.05)

        def fired() -> bool:
            return _total(_samples(web_url), "mailstream_timers_fired_total") >= probes

        await _wait(fired, 120 + wait_s, "the probe timers")
        s = _samples(web_url)
        ticks = _total(s, "mailstream_timer_tick_seconds_count") - ticks_before
        tick_mean = (_total(s, "mailstream_timer_tick_seconds_sum") - tick_sum_before) / max(
            ticks, 1
        )
        lag_count = _total(s, "mailstream_timer_lag_seconds_count")
        result = {
            "scenario": "timers",
            "broker": "embedded (tansu), producer_max_batch_size=1",
            "pending_timers": pending,
            "load_seconds": round(load_s, 1),
            "probe_timers_fired": int(lag_count),
            "lag_mean_ms": round(
                1000 * _total(s, "mailstream_timer_lag_seconds_sum") / lag_count, 1
            ),
            "lag_p50_le_ms": 1000 * _quantile(s, "mailstream_timer_lag_seconds", 0.5),
            "lag_p99_le_ms": 1000 * _quantile(s, "mailstream_timer_lag_seconds", 0.99),
            "ticks_during_probes": int(ticks),
            "tick_mean_ms": round(1000 * tick_mean, 2),
            "tick_p99_le_ms": 1000 * _quantile(s, "mailstream_timer_tick_seconds", 0.99),
        }
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        return result
    finally:
        clean_up([worker] if worker is not None else [], broker, root)


async def bench_ingest(
    events: int, users: int, out: Path, batching: bool = False
) -> dict[str, Any]:
    """Events per second of the full engine against a bare decoding Faust agent."""
    import random

    from mailstream.loadgen import synthetic_events

    root = Path(tempfile.mkdtemp(prefix="mailstream-bench-"))
    broker = EmbeddedBroker("127.0.0.1", free_port(), log_path=root / "broker.log")
    procs: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    try:
        broker.start()
        names = [
            "mailstream." + n
            for n in ("events", "dlq", "sends.transactional", "sends.marketing", "feedback")
        ]
        await ensure_topics(broker.bootstrap_servers, names, 4)
        print(f"producing {events:,} events over {users:,} users ...", flush=True)
        source = synthetic_events(random.Random(1), users, duplicates=0.02, malformed=0.005)
        async with EventProducer(broker.bootstrap_servers, linger_ms=20) as producer:
            for _ in range(events):
                key, value = next(source)
                await producer.send_raw(key, value)
            await producer.flush()

        print("ceiling: a bare Faust agent that decodes each event ...", flush=True)
        ceiling_dir = root / "ceiling"
        ceiling_dir.mkdir()
        with open(root / "ceiling.log", "ab") as log:
            ceiling_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mailstream.bench_ceiling",
                    broker.bootstrap_servers,
                    "mailstream.events",
                    str(events),
                    "4",
                    str(ceiling_dir),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(ceiling_proc)
        span_file = ceiling_dir / "span.json"
        await _wait(
            lambda: span_file.exists() or ceiling_proc.poll() is not None, 600, "the ceiling agent"
        )
        if not span_file.exists():
            raise RuntimeError(f"the ceiling agent exited; see {root / 'ceiling.log'}")
        span = orjson.loads(span_file.read_bytes())
        ceiling = events / max(span["last"] - span["first"], 1e-6)
        ceiling_proc.terminate()

        print("pipeline: a mailstream worker with the shipped journeys ...", flush=True)
        port = free_port()
        web_url = f"http://127.0.0.1:{port}"
        config = {
            "app_id": "bench-pipeline",
            "broker": {
                "url": broker.url,
                "embedded": not batching,
                "session_timeout": "3s",
                "heartbeat_interval": "500ms",
            },
            "providers": {"outbox": {"directory": str(root / "outbox")}},
        }
        (root / "mailstream.yaml").write_text(yaml.safe_dump(config))
        env.update(
            MAILSTREAM_CONFIG=str(root / "mailstream.yaml"),
            MAILSTREAM_WEB_PORT=str(port),
            MAILSTREAM_DATA_DIR=str(root / "data"),
            MAILSTREAM_UNSUBSCRIBE_SECRET=secrets.token_urlsafe(24),
            MAILSTREAM_ADMIN_TOKEN=secrets.token_urlsafe(18),
        )
        with open(root / "worker.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mailstream", "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        first: tuple[float, float] | None = None
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            try:
                s = _samples(web_url)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            consumed = _total(s, "mailstream_events_consumed_total")
            now = time.monotonic()
            if consumed > 0 and first is None:
                first = (now, consumed)
            if consumed >= events:
                break
            await asyncio.sleep(0.25)
        else:
            raise RuntimeError("the pipeline did not consume every event in time")
        assert first is not None
        pipeline = (consumed - first[1]) / max(now - first[0], 1e-6)
        changelog = _total(s, "mailstream_changelog_records_total")
        result = {
            "scenario": "ingest",
            "broker": "embedded (tansu), "
            + (
                "producer batching on (table recovery NOT exact on tansu)"
                if batching
                else "producer_max_batch_size=1"
            ),
            "events": events,
            "users": users,
            "ceiling_events_per_s": round(ceiling),
            "pipeline_events_per_s": round(pipeline),
            "ratio_to_ceiling": round(pipeline / ceiling, 3),
            "changelog_records_per_event": round(changelog / consumed, 3),
            "send_commands": int(_total(s, "mailstream_send_commands_total", result="emitted")),
            "batch_seconds_mean": round(
                _total(s, "mailstream_ingest_batch_seconds_sum")
                / max(_total(s, "mailstream_ingest_batch_seconds_count"), 1),
                4,
            ),
        }
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        return result
    finally:
        clean_up(procs, broker, root)


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="measure ingest throughput, timer lag or delivery rate; prints figures"
    )
    p.add_argument(
        "scenario", choices=["ingest", "timers", "delivery"], nargs="?", default="ingest"
    )
    p.add_argument("--events", type=int, default=50_000, help="ingest: events produced")
    p.add_argument("--users", type=int, default=5_000, help="ingest: distinct users")
    p.add_argument(
        "--batching",
        action="store_true",
        help="ingest: let the worker batch produce requests, as on Apache Kafka (on the"
        " embedded broker this makes table recovery inexact; for comparison only)",
    )
    p.add_argument("--pending", type=int, default=100_000, help="timers: timers held pending")
    p.add_argument("--probes", type=int, default=200, help="timers: short waits measured")
    p.add_argument("--wait", type=float, default=3.0, help="timers: the probes' wait, seconds")
    p.add_argument("--sends", type=int, default=5_000, help="delivery: sends with no limit")
    p.add_argument("--rate", type=float, default=100.0, help="delivery: the limit measured")
    p.add_argument("--out", help="where to write the JSON figures (default bench-SCENARIO.json)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    out = Path(args.out or f"bench-{args.scenario}.json")
    if args.scenario == "ingest":
        result = asyncio.run(bench_ingest(args.events, args.users, out, args.batching))
    elif args.scenario == "delivery":
        from mailstream.bench_delivery import bench_delivery

        result = asyncio.run(bench_delivery(args.sends, args.rate, out))
    else:
        result = asyncio.run(bench_timers(args.pending, args.probes, args.wait, out))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")
    print(f"(written to {out})")
    return 0
