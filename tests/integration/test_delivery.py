"""The delivery agent on real workers against a local imitation of the providers' APIs:
each send once, retries after backoff, hard bounces suppressed, the rate kept, crashes."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.fakes.http_providers import FakeProviders
from tests.fakes.smtp_server import FakeSmtpServer
from tests.integration import signed
from tests.integration.harness import Deployment, Worker, metric_sum, wait_for

command = signed.send_document


async def produce(deployment: Deployment, commands: list[dict[str, Any]]) -> None:
    """Send commands straight onto the send topics, keyed by user id and signed, as the
    engine writes them."""
    producer = AIOKafkaProducer(bootstrap_servers=deployment.broker.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        for c in commands:
            topic = deployment.topics[f"sends_{c['category']}"]
            key, value = signed.send_command(c)
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def use_fake(deployment: Deployment, fake: FakeProviders, **delivery: Any) -> None:
    deployment.overrides["delivery"] = {"provider": "postmark", **delivery}
    deployment.overrides["providers"] = {"postmark": {"base_url": fake.url}}


def start(deployment: Deployment, fake: FakeProviders, name: str, **kw: Any) -> Worker:
    worker = deployment.worker(name, **kw)
    worker.env.update(fake.env())
    return worker.start()


async def test_each_send_arrives_once_with_its_headers_and_a_repeat_is_skipped(
    deployment: Deployment,
) -> None:
    async with FakeProviders() as fake:
        use_fake(deployment, fake, from_address="Shop <hello@shop.test>")
        worker = start(deployment, fake, "a")
        await deployment.wait_ready([worker])
        commands = [
            command(f"s{i}", f"user{i}", "marketing" if i % 2 else "transactional")
            for i in range(20)
        ]
        await produce(deployment, commands)
        got = await fake.wait_for(20, timeout=30)

        by_id = {r.metadata["send_id"]: r for r in got}
        assert sorted(by_id) == sorted(c["send_id"] for c in commands)
        for c in commands:
            r = by_id[c["send_id"]]
            assert r.to == c["to"] and r.subject == c["subject"]
            assert r.message_id == f"<{c['send_id']}@shop.test>"
            assert r.metadata["user_id"] == c["user_id"]
            assert r.headers["X-Mailstream-Send-Id"] == c["send_id"]
            marketing = c["category"] == "marketing"
            assert ("List-Unsubscribe" in r.headers) is marketing
            if marketing:
                assert r.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
                assert r.headers["List-Unsubscribe"].startswith(f"<{worker.url}/unsubscribe/")

        await produce(deployment, commands)  # the same send ids again

        async def skipped() -> bool:
            m = await worker.metrics()
            return metric_sum(m, "mailstream_deliveries_total", result="deduplicated") == 20

        await wait_for(skipped, 20, "the repeated commands to be skipped")
        assert len(fake.received) == 20


async def test_a_send_is_recorded_as_attempting_while_the_provider_has_it(
    deployment: Deployment,
) -> None:
    # What a worker that dies mid-call leaves behind depends on this record: a marketing
    # send found `attempting` is reported unknown rather than sent again.
    deployment.overrides["workflows"] = {
        "promo": {
            "trigger": {"event": "promo_viewed"},
            "entry": "always",
            "steps": [{"send": "welcome", "category": "marketing"}],
        },
        "receipt": {
            "trigger": {"event": "order_completed"},
            "entry": "always",
            "steps": [{"send": "order_receipt", "category": "transactional"}],
        },
    }
    async with FakeProviders() as fake:
        use_fake(deployment, fake)
        for user in ("promo", "buyer"):
            fake.script(f"{user}@example.com", [("sleep", 4.0)])
        worker = start(deployment, fake, "a")
        await deployment.wait_ready([worker])
        async with deployment.producer() as p:
            for user in ("promo", "buyer"):
                traits = {"email": f"{user}@example.com", "consent": {"marketing": True}}
                await p.identify(user, traits)
            await p.emit("promo_viewed", "promo", {})
            await p.emit("order_completed", "buyer", {"order_id": "A-1", "total": 5})
            await p.flush()

        async def states() -> dict[str, list[str]]:
            found = {}
            for user in ("promo", "buyer"):
                status, view = await worker.get(f"/api/users/{user}")
                assert status in (200, 404), view  # 404: not taken in yet
                found[user] = [d["state"] for d in view.get("deliveries", [])]
            return found

        async def both_attempting() -> bool:
            return await states() == {"promo": ["attempting"], "buyer": ["attempting"]}

        await wait_for(both_attempting, 10, "both sends to be recorded as attempting")
        assert len(fake.received) == 0  # the provider still has them both
        await fake.wait_for(2, timeout=30)

        async def both_sent() -> bool:
            return await states() == {"promo": ["sent"], "buyer": ["sent"]}

        await wait_for(both_sent, 10, "both sends to be recorded as sent")


async def test_retries_after_backoff_and_an_invalid_address_is_suppressed(
    deployment: Deployment,
) -> None:
    async with FakeProviders() as fake:
        use_fake(deployment, fake, retry={"base": "300ms", "max_attempts": 3})
        fake.script("flaky@example.com", [("429", {"Retry-After": "2"}), ("ok",)])
        fake.script("busy@example.com", [("500",), ("503",), ("ok",)])
        fake.script("down@example.com", [("500",)] * 5)
        fake.invalid("bad@example.com")
        worker = start(deployment, fake, "a")
        await deployment.wait_ready([worker])
        users = ["flaky", "busy", "down", "bad", "fine"]
        async with deployment.producer() as p:
            for user in users:
                await p.identify(user, {"email": f"{user}@example.com"})
            await p.flush()
        await produce(deployment, [command(f"send-{u}", u) for u in users])

        await fake.wait_for(3, timeout=30)
        arrived = {r.to.split("@")[0] for r in fake.received}
        assert arrived == {"flaky", "busy", "fine"}
        tries = [a for a in fake.attempts if a.to == "flaky@example.com"]
        assert [a.status for a in tries] == [429, 200]
        assert tries[1].monotonic - tries[0].monotonic >= 2.0, "Retry-After is honoured"
        busy = [a.status for a in fake.attempts if a.to == "busy@example.com"]
        assert busy == [500, 503, 200]

        letters = await deployment.read_topic(deployment.topics["dlq"], 2, timeout=30)
        reasons = {}
        for letter in letters:
            headers = {k: v for k, v in letter.headers}
            reasons[orjson.loads(letter.value)["user_id"]] = headers
        assert reasons["bad"]["mailstream.reason_code"] == b"delivery_failed"
        assert b"http_422" in reasons["bad"]["mailstream.reason"]
        assert reasons["down"]["mailstream.reason_code"] == b"delivery_exhausted"
        assert len(orjson.loads(reasons["down"]["mailstream.attempts"])) == 3
        assert len([a for a in fake.attempts if a.to == "down@example.com"]) == 3

        status, bad = await worker.get("/api/users/bad")
        assert status == 200 and bad["suppressions"]["hard_bounce"]["scope"] == "all"
        status, fine = await worker.get("/api/users/fine")
        assert fine["suppressions"] == {}


async def test_the_provider_limit_holds_across_two_workers(deployment: Deployment) -> None:
    limit, burst, total = 50, 5, 1200
    async with FakeProviders() as fake:
        use_fake(deployment, fake, rate_limit=limit, burst=burst)
        workers = [start(deployment, fake, name) for name in ("a", "b")]
        await deployment.wait_ready(workers)
        await produce(deployment, [command(f"r{i}", f"u{i}", "marketing") for i in range(total)])
        await fake.wait_for(limit * 2, timeout=30)  # the backlog is draining at the limit
        urgent = [command(f"t{i}", f"v{i}") for i in range(5)]
        before = len(fake.received)
        await produce(deployment, urgent)
        got = await fake.wait_for(total + len(urgent), timeout=120)

    # Receipts do not wait behind the marketing backlog: they go with the next tokens.
    order = [r.metadata["send_id"] for r in sorted(got, key=lambda r: r.monotonic)]
    receipt_positions = [order.index(c["send_id"]) for c in urgent]
    # within about a second of sends (the provider limit) after they were produced
    assert max(receipt_positions) < before + limit, (before, receipt_positions)
    got = [r for r in got if r.metadata["send_id"].startswith("r")]
    times = sorted(r.monotonic for r in got)
    # Calls start at most limit + burst in any second. Between starting and arriving
    # here a call can be held up (a busy worker or test process on a loaded machine;
    # 110 ms was seen with two CPU hogs running, and up to 0.3 s beside three Kafka nodes
    # on the same two cores), which brings calls started more than a second apart within
    # a second of each other here: so any 0.6 s holds at most limit + burst, allowing
    # 0.4 s of such jitter. Two workers each sending at the whole limit for that long
    # would put about limit * 1.2 in it.
    window = 1.0 - 0.4
    counts = [
        sum(1 for t in times[i : i + limit + burst + 1] if t < start + window)
        for i, start in enumerate(times)
    ]
    busiest = max(counts)
    at = counts.index(busiest)
    gap = times[at] - times[at - 1] if at else 0.0  # a hold-up shows as a gap before
    assert busiest <= limit + burst, f"{busiest} messages within {window} s, {gap:.3f} s after one"
    # Over the whole run (24 s), the two workers together keep to the one limit: each
    # alone at the limit would make it about twice that.
    rate = (total - 1) / (times[-1] - times[0])
    # (the floor only says the limit's room is used: beside the other test processes on
    # two cores the workers once reached 0.898 of it)
    assert 0.8 * limit <= rate <= 1.05 * limit, f"{rate:.1f}/s against a {limit}/s limit"


@pytest.mark.parametrize("sends", [5000])
async def test_sigkill_mid_run_loses_no_receipt_and_sends_no_marketing_twice(
    deployment: Deployment, sends: int
) -> None:
    async with FakeProviders() as fake:
        use_fake(deployment, fake, rate_limit=1500, burst=100, concurrency=32)
        a = start(deployment, fake, "a")
        await deployment.wait_ready([a])
        commands = [
            command(f"k{i}", f"u{i % 700}", "marketing" if i % 2 else "transactional")
            for i in range(sends)
        ]
        await produce(deployment, commands)
        await fake.wait_for(sends // 5, timeout=60)
        a.kill(signal.SIGKILL)
        restarted = start(deployment, fake, "a", data_dir=a.data_dir)
        await deployment.wait_ready([restarted])

        transactional = {c["send_id"] for c in commands if c["category"] == "transactional"}
        marketing = {c["send_id"] for c in commands if c["category"] == "marketing"}

        async def settled() -> dict[str, float] | None:
            seen = {r.metadata["send_id"] for r in fake.received}
            m = await restarted.metrics()
            unknown = metric_sum(m, "mailstream_deliveries_total", result="unknown")
            done = transactional <= seen and len(seen & marketing) + unknown >= len(marketing)
            return m if done else None

        try:
            m = await wait_for(settled, 90, "every receipt and every marketing send accounted")
        except AssertionError:
            seen = {r.metadata["send_id"] for r in fake.received}
            m = await restarted.metrics()
            raise AssertionError(
                f"receipts missing: {len(transactional - seen)} (e.g."
                f" {sorted(transactional - seen)[:3]}); marketing delivered"
                f" {len(seen & marketing)} + unknown"
                f" {metric_sum(m, 'mailstream_deliveries_total', result='unknown')}"
                f" of {len(marketing)}; queued"
                f" {metric_sum(m, 'mailstream_deliveries_total', result='queued')},"
                f" deduplicated"
                f" {metric_sum(m, 'mailstream_deliveries_total', result='deduplicated')}"
            ) from None
        per_id = Counter(r.metadata["send_id"] for r in fake.received)
        twice = [sid for sid in marketing if per_id[sid] > 1]
        assert twice == [], f"marketing sent twice: {twice[:5]}"
        assert transactional <= set(per_id), "no receipt is lost"
        unknown = int(metric_sum(m, "mailstream_deliveries_total", result="unknown"))
        delivered = set(per_id) & marketing
        # A marketing send caught mid-call by the kill is given up as unknown: the provider
        # may or may not have taken it, so it can also be among the delivered. Only the
        # calls in flight at the kill can be caught (concurrency: 32).
        assert unknown <= 32, unknown
        listed: set[str] = set()
        if unknown:
            letters = await deployment.read_topic(deployment.topics["dlq"], unknown, timeout=20)
            codes = Counter(dict(x.headers)["mailstream.reason_code"] for x in letters)
            assert codes[b"unknown_outcome"] == unknown, "each unknown outcome is listed"
            listed = {orjson.loads(x.value)["send_id"] for x in letters}
        assert listed <= marketing
        assert marketing - delivered <= listed, "a marketing send neither delivered nor listed"


async def test_smtp_retries_a_421_and_suppresses_a_550(deployment: Deployment) -> None:
    with FakeSmtpServer() as smtp:
        smtp.script("later@example.com", [421, 250])
        smtp.script("gone@example.com", [550])
        deployment.overrides["delivery"] = {"provider": "smtp", "retry": {"base": "300ms"}}
        deployment.overrides["providers"] = {
            "smtp": {"host": smtp.host, "port": smtp.port, "tls": "none"}
        }
        worker = deployment.worker("a").start()
        await deployment.wait_ready([worker])
        users = ["later", "gone", "fine"]
        async with deployment.producer() as p:
            for user in users:
                await p.identify(user, {"email": f"{user}@example.com"})
            await p.flush()
        await produce(deployment, [command(f"smtp-{u}", u, "marketing") for u in users])

        got = await smtp.until(2, timeout=30)
        assert sorted(r.rcpt_tos[0] for r in got) == ["fine@example.com", "later@example.com"]
        for r in got:
            assert r.message_id == f"<smtp-{r.rcpt_tos[0].split('@')[0]}@localhost>"
            assert r.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"

        async def suppressed() -> bool:
            status, gone = await worker.get("/api/users/gone")
            return status == 200 and "hard_bounce" in gone["suppressions"]

        await wait_for(suppressed, 20, "the 550 recipient to be suppressed")
        m = await worker.metrics()
        assert metric_sum(m, "mailstream_sends_total", provider="smtp", result="retry") == 1


async def test_malformed_commands_and_feedback_are_dead_lettered_and_the_worker_goes_on(
    deployment: Deployment,
) -> None:
    async with FakeProviders() as fake:
        use_fake(deployment, fake)
        worker = start(deployment, fake, "a")
        await deployment.wait_ready([worker])
        producer = AIOKafkaProducer(bootstrap_servers=deployment.broker.bootstrap_servers)
        await producer.start()
        try:
            topics = deployment.topics
            # signed by a worker, so it is their content the agent finds wrong
            not_json = signed.cluster.seal("send", b"u1", b"{not json}")
            await producer.send_and_wait(topics["sends_marketing"], not_json, key=b"u1")
            await producer.send_and_wait(
                topics["sends_transactional"],
                signed.send_command({"send_id": "x", "user_id": "u1"})[1],
                key=b"u1",
            )
            await producer.send_and_wait(topics["feedback"], b'{"kind": "exploded"}', key=b"u1")
            listed = {**command("bad-priority", "u1"), "priority": ["high"]}
            key, value = signed.send_command(listed)
            await producer.send_and_wait(topics["sends_transactional"], value, key=key)
        finally:
            await producer.stop()
        await produce(deployment, [command("good-1", "u1")])
        await fake.wait_for(1, timeout=30)

        letters = await deployment.read_topic(deployment.topics["dlq"], 4, timeout=30)
        reasons = sorted(
            (dict(x.headers)["mailstream.reason_code"], dict(x.headers)["mailstream.reason"])
            for x in letters
        )
        assert [code for code, _ in reasons] == [
            b"bad_feedback",
            b"bad_send_command",
            b"bad_send_command",
            b"bad_send_command",
        ]
        commands = b" | ".join(reason for code, reason in reasons if code == b"bad_send_command")
        assert b"missing or not a string: tenant_id" in commands
        assert b"not JSON" in commands
        assert b"priority must be one of high, normal, low" in commands
        assert all(dict(x.headers)["mailstream.source.offset"] != b"-1" for x in letters)
        assert worker.alive()
