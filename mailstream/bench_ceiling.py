"""The benchmark's ceiling: a bare Faust agent that only decodes events and counts them.

Run as ``python -m mailstream.bench_ceiling BROKER TOPIC COUNT PARTITIONS DATADIR``; once
COUNT events have arrived it writes ``DATADIR/span.json`` with the time of the first and
the last (Faust's worker turns stdout into log lines, so a file it is).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import faust
import orjson

from mailstream.broker import EMBEDDED_FETCH_WAIT, set_fetch_max_wait


def main() -> None:
    broker, topic_name, count, partitions, datadir = sys.argv[1:6]
    expected = int(count)
    set_fetch_max_wait(EMBEDDED_FETCH_WAIT)  # as a worker does on the embedded broker
    app = faust.App(
        f"bench-{Path(datadir).name}",  # its own group: each run reads from the start
        broker=f"kafka://{broker}",
        datadir=datadir,
        topic_partitions=int(partitions),
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=3.0,
        broker_heartbeat_interval=0.5,
        web_enabled=False,
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "first": 0.0}

    @app.agent(topic)
    async def decode(stream):
        async for value in stream:
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError:  # the malformed share of the traffic
                pass
            if seen["n"] == 0:
                seen["first"] = time.time()
            seen["n"] += 1
            if seen["n"] == expected:
                span = {"first": seen["first"], "last": time.time()}
                (Path(datadir) / "span.json").write_bytes(orjson.dumps(span))

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
