"""Events through a real worker: state equals a plain replay, bad input is dead-lettered."""

from __future__ import annotations

from collections import Counter

from tests.integration.harness import Deployment, metric_sum, state_mismatches, wait_for
from tests.integration.traffic import Traffic, make_traffic, replay


async def produce(deployment: Deployment, traffic: Traffic) -> None:
    async with deployment.producer() as producer:
        for key, value in traffic.messages:
            await producer.send_raw(key, value)
        await producer.flush()


async def test_ten_thousand_events_state_dlq_and_metrics(deployment: Deployment) -> None:
    traffic = make_traffic(seed=7, users=300, count=10_000, duplicates=0.05, malformed=0.01)
    assert len(set(code for _, code in traffic.malformed)) >= 8, "several kinds of bad input"
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    await produce(deployment, traffic)

    async def all_consumed() -> bool:
        m = await worker.metrics()
        return metric_sum(m, "mailstream_events_consumed_total") >= len(traffic.messages)

    await wait_for(all_consumed, 180, "10,000 events to be consumed")
    m = await worker.metrics()
    outcomes = {
        o: metric_sum(m, "mailstream_events_total", outcome=o)
        for o in ("processed", "deduplicated", "dead_lettered")
    }
    assert metric_sum(m, "mailstream_events_consumed_total") == len(traffic.messages)
    assert sum(outcomes.values()) == len(traffic.messages)
    assert outcomes == {
        "processed": len(traffic.valid) - traffic.duplicates,
        "deduplicated": traffic.duplicates,
        "dead_lettered": len(traffic.malformed),
    }
    by_reason = Counter(code for _, code in traffic.malformed)
    for code, n in by_reason.items():
        assert metric_sum(m, "mailstream_dead_letters_total", reason=code) == n, code

    letters = await deployment.read_topic(
        deployment.topics["events"].replace(".events", ".dlq"), len(traffic.malformed)
    )
    assert len(letters) == len(traffic.malformed)
    got = sorted(
        (msg.value, dict(msg.headers)["mailstream.reason_code"].decode()) for msg in letters
    )
    assert got == sorted(traffic.malformed)
    for msg in letters:
        headers = dict(msg.headers)
        assert headers["mailstream.reason"], "every dead letter says why"
        assert headers["mailstream.source.topic"] == deployment.topics["events"].encode()
        assert int(headers["mailstream.source.offset"]) >= 0

    expected = replay(traffic.valid)
    assert await state_mismatches(worker, expected) == []
    status, body = await worker.get("/api/users/nobody-at-all")
    assert status == 404 and "nobody-at-all" in body["error"]
    assert worker.alive()
