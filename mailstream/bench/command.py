"""``mailstream bench``: measurements that start everything they need and print figures.

Scenarios: ``pipeline`` (the engine against a bare Faust agent on the same topic, with
latency, scale-out and state size; in mailstream.bench.pipeline),
``timers`` (how late waits fire, and what a tick costs, with many pending timers) and
``delivery`` (sends per second to a local provider, and how well a rate limit holds;
in mailstream.bench.delivery_rate).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
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
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from mailstream.config.sections import BROKER_URL_PATTERN, TopicsConfig
from mailstream.kafka.embedded_broker import EmbeddedBroker, free_port
from mailstream.kafka.topics import ensure_topics
from mailstream.producer import EventProducer

BROKER_URL = re.compile(BROKER_URL_PATTERN)


def _samples(web_url: str, *names: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The worker's metrics (only ``names``, if given: the whole page costs the worker a
    few milliseconds of CPU each time, and the bench polls it while measuring)."""
    query = "?" + "&".join(f"name[]={n}" for n in names) if names else ""
    with urllib.request.urlopen(f"{web_url}/metrics{query}", timeout=5) as resp:
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


def _quantile(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, q: float, **labels: str
) -> float:
    """Upper bound of the bucket holding quantile ``q`` of a Prometheus histogram (of the
    series with ``labels``)."""
    buckets = sorted(
        (float(lab["le"]), v)
        for lab, v in samples.get(f"{name}_bucket", [])
        if "le" in lab and all(lab.get(k) == x for k, x in labels.items())
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


class ExistingBroker:
    """A Kafka cluster the bench uses but did not start (``--broker``): there is no
    process of it to measure, and nothing to stop."""

    process: subprocess.Popen[bytes] | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        self.bootstrap_servers = url.removeprefix("kafka://")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def topic_names(name: str) -> dict[str, str]:
    """The worker config's ``topics`` for an app of the bench named ``name``: each of
    the config's topics, under ``name`` instead of ``mailstream``."""
    names = {}
    for key, spec in TopicsConfig.model_fields.items():
        if isinstance(spec.default, str):
            names[key] = name + spec.default.removeprefix("mailstream")
    return names


class Site:
    """The broker a run uses, and what it calls things there.

    On an existing broker (``broker_url``) every topic, app id and consumer group of the
    run carries the run's own suffix: the topics of an earlier run, and the changelogs
    its workers wrote, would otherwise be read as this run's (and a production cluster's
    ``mailstream.events`` is nobody's bench)."""

    def __init__(self, root: Path, broker_url: str | None = None) -> None:
        self.root = root
        self.broker: EmbeddedBroker | ExistingBroker = (
            ExistingBroker(broker_url)
            if broker_url
            else EmbeddedBroker("127.0.0.1", free_port(), log_path=root / "broker.log")
        )
        self.embedded = broker_url is None
        self.suffix = "" if self.embedded else f"-{secrets.token_hex(3)}"
        # the run's workers share it, and what the bench writes to their topics is signed with it
        self.cluster_secret = secrets.token_urlsafe(32)

    @property
    def described(self) -> str:
        """The broker, as the figures name it."""
        if self.embedded:
            return "embedded (tansu), producer batching"
        return f"{self.broker.url} (not started here: its CPU is not measured)"

    def apart(self, name: str) -> str:
        """``name`` as this run uses it on the broker."""
        return name + self.suffix

    def broker_config(self) -> dict[str, Any]:
        """The worker config's ``broker``: short timeouts, so a phase starts quickly."""
        return {
            "url": self.broker.url,
            "embedded": self.embedded,
            "session_timeout": "3s",
            "heartbeat_interval": "500ms",
            "rebalance_timeout": "3s",
        }

    async def topics(
        self, name: str, partitions: int = 4, events_from: str | None = None
    ) -> dict[str, str]:
        """Topics of their own for the workers of app ``name``; they read the events of
        ``events_from`` if given (as an app of their own, from its start)."""
        topics = topic_names(self.apart(name))
        if events_from is not None:
            topics["events"] = events_from
        await ensure_topics(self.broker.bootstrap_servers, topics.values(), partitions)
        return topics

    async def events_topic(self, name: str, partitions: int = 4) -> str:
        """Only the events topic of app ``name``: for events that apps of other names
        read (``topics(..., events_from=...)``)."""
        topic = topic_names(self.apart(name))["events"]
        await ensure_topics(self.broker.bootstrap_servers, [topic], partitions)
        return topic

    def spawn_worker(
        self, label: str, config: dict[str, Any], port: int, **env: str
    ) -> subprocess.Popen[bytes]:
        """Start a worker with ``config`` and web port ``port``; its config file, data
        directory and log are the run's ``label``.yaml, ``label`` and ``label``.log.
        ``env`` adds to the environment, of which no ``MAILSTREAM_`` setting is passed on
        (the bench's workers are configured here, not by whoever ran the bench)."""
        path = self.root / f"{label}.yaml"
        path.write_text(yaml.safe_dump(config))
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
        worker_env.update(
            MAILSTREAM_CONFIG=str(path),
            MAILSTREAM_WEB_PORT=str(port),
            MAILSTREAM_DATA_DIR=str(self.root / label),
            MAILSTREAM_UNSUBSCRIBE_SECRET=secrets.token_urlsafe(24),
            MAILSTREAM_ADMIN_TOKEN=secrets.token_urlsafe(18),
            MAILSTREAM_CLUSTER_SECRET=self.cluster_secret,
            **env,
        )
        with open(self.root / f"{label}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "mailstream", "worker"],
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def close(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """End the run: stop ``procs`` and the broker, remove the run's files
        (``clean_up``), and delete what it created on an existing broker."""
        clean_up(procs, self.broker, self.root)
        await self.delete_topics()

    async def delete_topics(self) -> None:
        """On an existing broker, delete what this run created there: its topics and its
        workers' changelogs (every name carrying the run's suffix)."""
        if self.embedded:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker.bootstrap_servers)
        try:
            await admin.start()
            names = [t for t in await admin.list_topics() if self.suffix in t]
            if names:
                await admin.delete_topics(names)
        except Exception as exc:  # the figures are already written; say what is left
            print(f"could not delete this run's topics ({self.suffix}): {exc!r}", flush=True)
        finally:
            await admin.close()


def clean_up(
    procs: list[subprocess.Popen[bytes]], broker: EmbeddedBroker | ExistingBroker, root: Path
) -> None:
    """Stop every process the bench started, then the broker; remove its files, unless
    MAILSTREAM_BENCH_KEEP is set (their logs are then left in ``root``)."""
    stop_processes(procs)
    broker.stop()
    if os.environ.get("MAILSTREAM_BENCH_KEEP"):
        print(f"(logs and data kept in {root})")
    else:
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


async def bench_timers(
    pending: int, probes: int, wait_s: float, out: Path, broker_url: str | None = None
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mailstream-bench-"))
    site = Site(root, broker_url)
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

        await _wait(ready, 90, "the worker")
        print(f"loading {pending:,} pending timers ...", flush=True)
        started = time.monotonic()
        producing = EventProducer(site.broker.bootstrap_servers, topics["events"], linger_ms=5)
        async with producing as producer:
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
            "broker": site.described,
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
        await site.close([worker] if worker is not None else [])


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the pipeline against a bare Faust agent, timer lag or delivery rate;"
        " prints figures and writes them as JSON",
        epilog="MAILSTREAM_BENCH_KEEP=1 keeps the run's logs and data in its temporary"
        " directory (printed at the end).",
    )
    p.add_argument(
        "scenario", choices=["pipeline", "timers", "delivery"], nargs="?", default="pipeline"
    )
    p.add_argument("--events", type=int, default=50_000, help="pipeline: events produced")
    p.add_argument(
        "--mix-users",
        type=int,
        default=5_000,
        help="pipeline: distinct users in the traffic (twice as many for two workers)",
    )
    p.add_argument(
        "--users",
        type=int,
        default=20_000,
        help="pipeline: users in the tables when RSS and disk are measured (e.g. 1000000)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=15.0,
        help="pipeline: how long traffic runs at half the measured rate for latency",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        help="pipeline: events per second for the latency phase (default: half one"
        " worker's rate, measured before and after the two workers)",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="pipeline: scale-out rounds of two workers then one worker again (the ratio is"
        " of the means, one worker measured on both sides of every two)",
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help="an existing Kafka cluster (kafka://host:port[,host:port]) instead of the"
        " embedded broker; the run's topics, app ids and consumer groups carry a suffix of"
        " their own and are deleted at the end, and the broker's CPU is not measured",
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
    if args.pairs < 1:
        print(f"mailstream bench: --pairs {args.pairs} is not 1 or more", file=sys.stderr)
        return 2
    if args.broker is not None and not BROKER_URL.match(args.broker):
        print(
            f"mailstream bench: --broker {args.broker!r} is not kafka://host:port[,host:port]",
            file=sys.stderr,
        )
        return 2
    if args.scenario == "pipeline":
        from mailstream.bench.pipeline import bench_pipeline

        result = asyncio.run(
            bench_pipeline(
                args.events,
                args.mix_users,
                args.users,
                args.latency_seconds,
                out,
                latency_rate=args.latency_rate,
                broker_url=args.broker,
                pairs=args.pairs,
            )
        )
    elif args.scenario == "delivery":
        from mailstream.bench.delivery_rate import bench_delivery

        result = asyncio.run(bench_delivery(args.sends, args.rate, out, args.broker))
    else:
        result = asyncio.run(bench_timers(args.pending, args.probes, args.wait, out, args.broker))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")
    print(f"(written to {out})")
    return 0
