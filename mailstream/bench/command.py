"""``mailstream bench``: the command's options, and the scenario each runs.

Scenarios: ``pipeline`` (the engine against a bare Faust agent on the same topic, with
latency, scale-out and state size; in mailstream.bench.pipeline),
``timers`` (how late waits fire, and what a tick costs, with many pending timers; in
mailstream.bench.timer_lag) and
``delivery`` (sends per second to a local provider, and how well a rate limit holds;
in mailstream.bench.delivery_rate), ``http`` (events per second through one worker's HTTP
endpoint; in mailstream.bench.http_ingest) and ``guarantees`` (throughput and latency at
least once against exactly once, on an Apache Kafka cluster; in
mailstream.bench.guarantees).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

from mailstream.config.kafka_sections import BROKER_URL_PATTERN

BROKER_URL = re.compile(BROKER_URL_PATTERN)


def add_bench_parser(sub: Any) -> None:
    """Add ``mailstream bench`` and its options to the CLI's subcommands ``sub``."""
    p = sub.add_parser(
        "bench",
        help="measure the pipeline against a bare Faust agent, timer lag, delivery rate, HTTP"
        " ingestion, or the two processing guarantees; prints figures and writes them as JSON",
        epilog="MAILSTREAM_BENCH_KEEP=1 keeps the run's logs and data in its temporary"
        " directory (printed at the end).",
    )
    p.add_argument(
        "scenario",
        choices=["pipeline", "timers", "delivery", "http", "guarantees"],
        nargs="?",
        default="pipeline",
    )
    p.add_argument(
        "--events", type=int, default=50_000, help="pipeline, guarantees, http: events produced"
    )
    p.add_argument(
        "--mix-users",
        type=int,
        default=5_000,
        help="pipeline, guarantees: distinct users in the traffic (in pipeline, twice as many"
        " for two workers)",
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
        help="pipeline, guarantees: how long traffic runs at half the measured rate for latency",
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
        " of the means, one worker measured on both sides of every two); guarantees: rounds"
        " of one worker in each mode",
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help="an existing Kafka cluster (kafka://host:port[,host:port]) instead of the"
        " embedded broker; the run's topics, app ids and consumer groups carry a suffix of"
        " their own and are deleted at the end, and the broker's CPU is not measured; TLS"
        " and SASL as the broker.security of the file --config names; guarantees needs one"
        " (the embedded broker has no transactions)",
    )
    p.add_argument("--pending", type=int, default=100_000, help="timers: timers held pending")
    p.add_argument("--probes", type=int, default=200, help="timers: short waits measured")
    p.add_argument("--wait", type=float, default=3.0, help="timers: the probes' wait, seconds")
    p.add_argument("--sends", type=int, default=5_000, help="delivery: sends with no limit")
    p.add_argument("--rate", type=float, default=100.0, help="delivery: the limit measured")
    p.add_argument("--batch", type=int, default=100, help="http: calls per /v1/batch request")
    p.add_argument("--connections", type=int, default=8, help="http: requests at once")
    p.add_argument("--out", help="where to write the JSON figures (default bench-SCENARIO.json)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the scenario ``args`` name; print its figures and write them as JSON."""
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
    security = None
    if args.broker is not None and args.config is not None:
        from mailstream.config.load import load_config

        security = load_config(args.config).broker.security
    # Every mailstream command builds this parser: a scenario's modules load when it runs.
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
                security=security,
                pairs=args.pairs,
            )
        )
    elif args.scenario == "guarantees":
        from mailstream.bench.guarantees import bench_guarantees

        if args.broker is None:
            print(
                "mailstream bench guarantees: give --broker kafka://host:port, an Apache Kafka"
                " cluster: the embedded broker has no transactions (`mailstream kafka` starts"
                " a local one)",
                file=sys.stderr,
            )
            return 2
        result = asyncio.run(
            bench_guarantees(
                args.events,
                args.mix_users,
                args.latency_seconds,
                out,
                args.broker,
                security,
                rounds=args.pairs,
            )
        )
    elif args.scenario == "http":
        from mailstream.bench.http_ingest import bench_http

        result = asyncio.run(
            bench_http(args.events, out, args.broker, security, args.batch, args.connections)
        )
    elif args.scenario == "delivery":
        from mailstream.bench.delivery_rate import bench_delivery

        result = asyncio.run(bench_delivery(args.sends, args.rate, out, args.broker, security))
    else:
        from mailstream.bench.timer_lag import bench_timers

        result = asyncio.run(
            bench_timers(args.pending, args.probes, args.wait, out, args.broker, security)
        )
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")
    print(f"(written to {out})")
    return 0
