"""``mailstream kafka``: a local Apache Kafka cluster on loopback, until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mailstream.kafka.local_cluster import KAFKA_VERSION, LocalKafka
from mailstream.runtime.signals import stop_on_signals


def add_kafka_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``kafka`` subcommand to the ``mailstream`` command line."""
    p = sub.add_parser(
        "kafka",
        help=f"run a local Apache Kafka {KAFKA_VERSION} cluster (needs Java and Maven)",
        description=(
            f"Resolve Apache Kafka {KAFKA_VERSION} from Maven Central (once, into"
            " ~/.cache/mailstream or $MAILSTREAM_KAFKA_CACHE) and run KRaft nodes on free"
            " loopback ports until Ctrl-C. Point workers at it with broker.url and"
            " broker.embedded: false."
        ),
    )
    p.add_argument("--nodes", type=int, default=3, help="how many nodes (default: 3)")
    p.add_argument("--dir", type=Path, help="where the nodes keep their data (default: a temp dir)")
    p.set_defaults(func=cmd_kafka)


def cmd_kafka(args: argparse.Namespace) -> int:
    root = args.dir or Path(tempfile.mkdtemp(prefix="mailstream-kafka-"))
    cluster = LocalKafka(root, nodes=args.nodes)
    stop = stop_on_signals()
    cluster.start()
    try:
        print(f"Apache Kafka {KAFKA_VERSION} ready at {cluster.url} ({len(cluster.nodes)} nodes)")
        print(f"data and logs in {root}; Ctrl-C stops it")
        sys.stdout.flush()
        while not stop.is_set():
            if any(n.process is None or n.process.poll() is not None for n in cluster.nodes):
                print("a Kafka node exited; see its server.log", file=sys.stderr)
                return 1
            stop.wait(0.5)
    finally:
        cluster.stop()
    return 0
