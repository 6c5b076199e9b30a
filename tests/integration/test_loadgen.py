"""``mailstream loadgen`` stamps each event with the time it sends it."""

from __future__ import annotations

import time

import orjson

from mailstream.cli.loadgen import run_loadgen
from tests.integration.harness import Deployment


async def test_paced_events_carry_the_time_they_were_sent(deployment: Deployment) -> None:
    started = int(time.time() * 1000)
    async with deployment.producer() as producer:
        sent = await run_loadgen(producer, rate=100.0, users=20, duration=2.0, seed=5)
    messages = await deployment.read_topic(deployment.topics["events"], sent, timeout=20)
    assert len(messages) == sent >= 150
    late = []
    for m in messages:
        stamp = orjson.loads(m.value)["timestamp"]
        assert stamp >= started
        # the record's own timestamp is when the producer took it
        if abs(m.timestamp - stamp) > 100:
            late.append((m.offset, m.timestamp - stamp))
    assert not late, f"{len(late)} of {sent} events stamped away from their send: {late[:5]}"
