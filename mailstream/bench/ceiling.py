"""The benchmark's ceiling: a bare Faust agent that only decodes events and counts them.

Run as ``python -m mailstream.bench.ceiling BROKER TOPIC PARTITIONS GROUP DATADIR KIND``,
KIND being ``embedded`` (the fetch wait is set as a worker sets it there) or ``existing``.
Agents started with the same GROUP share the topic's partitions, as workers do. Every
0.1 s, once events have come, an agent writes ``DATADIR/span.json``: how many it has
decoded and the times of the first and the last (Faust's worker turns stdout into log
lines, so a file it is).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from mailstream.config.load import load_config
from mailstream.kafka.access import kafka_access
from mailstream.kafka.embedded_quirks import EMBEDDED_FETCH_WAIT, set_fetch_max_wait

# How often an agent writes its span.json.
REPORT_EVERY = 0.1


def main() -> None:
    broker, topic_name, partitions, group, datadir, kind, broker_file = sys.argv[1:8]
    # TLS and SASL as the config file's broker.security says (mailstream.kafka.access)
    credentials = kafka_access(load_config(broker_file)).faust_credentials()
    if kind == "embedded":
        set_fetch_max_wait(EMBEDDED_FETCH_WAIT)  # as a worker does there
    app = faust.App(
        group,
        broker=f"kafka://{broker}",
        datadir=datadir,
        topic_partitions=int(partitions),
        consumer_auto_offset_reset="earliest",
        # Apache Kafka refuses a session under group.min.session.timeout.ms (6 s)
        broker_session_timeout=3.0 if kind == "embedded" else 6.0,
        broker_heartbeat_interval=0.5,
        web_enabled=False,
        **({"broker_credentials": credentials} if credentials is not None else {}),
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "first": 0.0, "last": 0.0}
    span_file = Path(datadir) / "span.json"

    @app.agent(topic)
    async def decode(stream: Any) -> None:
        async for value in stream:
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError:  # the malformed share of the traffic
                pass
            now = time.time()
            if seen["n"] == 0:
                seen["first"] = now
            seen["n"] += 1
            seen["last"] = now

    @app.timer(REPORT_EVERY)
    async def report() -> None:
        if seen["n"]:
            # written whole, then renamed: the bench never reads half a file
            partial = span_file.with_suffix(".part")
            partial.write_bytes(orjson.dumps(seen))
            os.replace(partial, span_file)

    # the worker command turns the web server back on unless told not to
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
