"""Poison events on a real worker: input that used to crash the worker at every restart
is dead-lettered with the reason, the worker keeps going, and every event is accounted
exactly once in the durable ledger. An exception injected into the engine for one user
(by a sitecustomize on the worker's path; nothing in mailstream knows of it) costs that
user's event or timer, not the batch."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from tests.integration.harness import Deployment, Worker, metric_sum, read_json, wait_for

NOW = int(time.time() * 1000)
CART = [{"name": "mug", "qty": 2}]
ITEMS = [i % 100 for i in range(21_000)]
FLOWS: dict[str, Any] = {
    "cart": {
        "trigger": {"event": "cart_updated"},
        "entry": "always",
        "steps": [{"wait": "1h"}, {"send": "cart_reminder"}],
    },
    "order_receipt": {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [{"send": "order_receipt", "category": "transactional"}],
    },
}


def event(event_type: str, user: str, payload: Any = None, **extra: Any) -> tuple[bytes, bytes]:
    doc = {
        "event_id": uuid.uuid4().hex,
        "event_type": event_type,
        "user_id": user,
        "timestamp": NOW,
        "payload": payload or {},
        **extra,
    }
    return user.encode(), orjson.dumps(doc)


def deep(levels: int) -> bytes:
    """JSON nested ``levels`` objects deep: more than orjson would write, so by hand."""
    return b'{"a":' * levels + b"1" + b"}" * levels


def with_deep(
    event_type: str, user: str, field: str, payload: dict[str, Any]
) -> tuple[bytes, bytes]:
    key, value = event(event_type, user, {**payload, field: "HOLE"})
    return key, value.replace(b'"HOLE"', deep(300))


def huge(user: str, size: int) -> tuple[bytes, bytes]:
    key, value = event("page_viewed", user, {"blob": ""})
    value = value.replace(b'"blob":""', b'"blob":"' + b"x" * (size - len(value)) + b'"')
    assert len(value) == size
    return key, value


async def _at_least(probe: Callable[[], Awaitable[float]], n: float) -> bool:
    return await probe() >= n


async def produce(deployment: Deployment, messages: list[tuple[bytes, bytes]]) -> None:
    async with deployment.producer() as producer:
        for key, value in messages:
            await producer.send_raw(key, value)
        await producer.flush()


async def ledger_of(worker: Worker, total: int, timeout: float) -> dict[str, Any]:
    async def accounted() -> dict[str, Any] | None:
        assert worker.alive(), f"worker {worker.name} exited:\n{worker.log_tail()}"
        status, stats = await worker.get("/api/local/stats")
        assert status == 200, stats
        return stats["ledger"] if stats["ledger"]["events"] >= total else None

    # wait_for hands back a connection error as its last answer: the worker is gone
    ledger = await wait_for(accounted, timeout, f"{total} events in the ledger")
    assert isinstance(ledger, dict), f"{ledger!r}; worker log:\n{worker.log_tail()}"
    return ledger


async def test_poison_events_are_dead_lettered_and_the_worker_goes_on(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = FLOWS
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    good = [f"good-{i}" for i in range(6)]
    before = [event("identify", u, {"email": f"{u}@example.com"}) for u in good]
    poison = [
        with_deep("identify", "deep-trait", "t", {"email": "deep@example.com"}),
        with_deep("cart_updated", "deep-cart", "note", {"items": CART}),
        huge("huge", 1_000_000),
        # 63 KB, under ingest.max_event_bytes; it rendered into a 7.2 MB send command
        event("order_completed", "big-order", {"order_id": "B", "items": ITEMS}),
        event("identify", "nul\x00user", {"email": "n@example.com"}),
        event("identify", "tab\tuser", {"email": "t@example.com"}),
        event("identify", "us\x1fuser", {"email": "u@example.com"}),
    ]
    bloat = [event("identify", "bloater", {f"blob{i}": "z" * 15_000}) for i in range(12)]
    after = [event("order_completed", u, {"order_id": f"O-{u}", "total": 5}) for u in good]
    messages = before + poison + bloat + after
    assert 60_000 < len(poison[3][1]) < 65_536
    await produce(deployment, messages)

    ledger = await ledger_of(worker, len(messages), timeout=30)
    assert ledger["events"] == len(messages), ledger
    assert worker.alive()

    letters = await deployment.read_topic(deployment.topics["dlq"], len(poison) + 1, timeout=10)
    codes: dict[str, list[Any]] = {}
    for letter in letters:
        codes.setdefault(dict(letter.headers)["mailstream.reason_code"].decode(), []).append(letter)
    refused_bloat = len(codes.get("user_too_large", []))
    assert 1 <= refused_bloat <= 6, codes.keys()
    assert {code: len(found) for code, found in codes.items()} == {
        "over_limit": 3,
        "too_large": 1,
        "control_character": 3,
        "user_too_large": refused_bloat,
    }
    assert ledger["dead_lettered"] == len(poison) + refused_bloat, ledger
    assert ledger["processed"] == len(before) + len(after) + len(bloat) - refused_bloat, ledger
    reasons = sorted(dict(m.headers)["mailstream.reason"].decode() for m in codes["over_limit"])
    assert reasons[0].startswith("payload.items is an array of 21000, over the limit of 1000")
    assert reasons[1].startswith("payload.note.a.a.a") and "ingest.limits.max_depth" in reasons[1]
    assert reasons[2].startswith("payload.t.a.a.a") and "ingest.limits.max_depth" in reasons[2]
    for letter in codes["user_too_large"]:
        assert (
            "ingest.limits.max_user_record_bytes"
            in dict(letter.headers)["mailstream.reason"].decode()
        )

    # The 1,000,000-byte event: its dead letter is cut to fit, and says what it was.
    [cut] = codes["too_large"]
    headers = dict(cut.headers)
    original = huge_value = next(v for k, v in poison if k == b"huge")
    assert headers["mailstream.original_size"] == b"1000000"
    assert headers["mailstream.original_sha256"] == hashlib.sha256(huge_value).hexdigest().encode()
    assert len(cut.value) < 1_000_000 and original.startswith(cut.value)

    # The good users go on: their receipts are sent, their states are right.
    receipts = await read_json(deployment, deployment.topics["sends_transactional"], 6, 15)
    assert sorted(r["user_id"] for r in receipts) == good
    for user in ("deep-trait", "deep-cart"):
        status, _ = await worker.get(f"/api/users/{user}")
        assert status == 404, f"{user} has a record: nothing of the refused event is kept"
    status, bloater = await worker.get("/api/users/bloater")
    assert status == 200 and len(bloater["traits"]) == len(bloat) - refused_bloat

    # The worker still takes events, and says so.
    await produce(deployment, [event("order_completed", "late", {"order_id": "L", "total": 1})])
    ledger = await ledger_of(worker, len(messages) + 1, timeout=15)
    assert ledger["processed"] == len(before) + len(after) + len(bloat) - refused_bloat + 1
    status, health = await worker.get("/health")
    assert status == 200 and health["ready"] and worker.alive()


# Installed in the worker through PYTHONPATH: the engine fails on one user's order and
# on another user's due timer, as a bug in the engine would.
SITECUSTOMIZE = """
import mailstream.workflows.automation as automation

_on_event = automation.Automation.on_event
_on_timer = automation.Automation.on_timer


def on_event(self, user, event, now):
    if user.user_id == "poison" and event.event_type == "order_completed":
        raise RuntimeError("injected engine failure for " + user.user_id)
    return _on_event(self, user, event, now)


def on_timer(self, user, kind, name, due, now):
    if user.user_id == "sleepy-poison":
        raise KeyError("injected timer failure")
    return _on_timer(self, user, kind, name, due, now)


automation.Automation.on_event = on_event
automation.Automation.on_timer = on_timer
"""


def with_injected_failures(worker: Worker, root: Path, code: str = SITECUSTOMIZE) -> Worker:
    site = root / "inject"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(code)
    path = worker.env.get("PYTHONPATH")
    worker.env["PYTHONPATH"] = str(site) + (f":{path}" if path else "")
    return worker


async def test_an_engine_exception_costs_one_event_or_timer_not_the_batch(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = {
        **FLOWS,
        "nudge": {
            "trigger": {"event": "signup"},
            "steps": [{"wait": "1s"}, {"send": "tips", "category": "transactional"}],
        },
    }
    worker = with_injected_failures(deployment.worker("a"), deployment.root).start()
    await deployment.wait_ready([worker])
    users = [f"user-{i}" for i in range(12)]
    messages = [event("identify", u, {"email": f"{u}@example.com"}) for u in users]
    messages.append(event("identify", "poison", {"email": "poison@example.com"}))
    messages.append(event("identify", "sleepy-poison", {"email": "sleepy@example.com"}))
    for u in users[:6]:
        messages.append(event("order_completed", u, {"order_id": f"O-{u}", "total": 5}))
    messages.append(event("order_completed", "poison", {"order_id": "P", "total": 5}))
    messages.append(event("page_viewed", "poison", {"path": "/"}))
    for u in users[6:]:
        messages.append(event("order_completed", u, {"order_id": f"O-{u}", "total": 5}))
    for u in [*users[:4], "sleepy-poison"]:
        messages.append(event("signup", u))
    await produce(deployment, messages)

    ledger = await ledger_of(worker, len(messages), timeout=30)
    assert ledger == {
        "partitions": 4,
        "events": len(messages),
        "processed": len(messages) - 1,
        "dead_lettered": 1,
    }
    sends = await read_json(deployment, deployment.topics["sends_transactional"], 16, 20)
    receipts = sorted(s["user_id"] for s in sends if s["template"] == "order_receipt")
    assert receipts == sorted(users)
    tips = sorted(s["user_id"] for s in sends if s["template"] == "tips")
    assert tips == sorted(users[:4]), "the other timers fire"

    letters = await deployment.read_topic(deployment.topics["dlq"], 2, timeout=10)
    by_code = [dict(m.headers)["mailstream.reason_code"] for m in letters]
    assert by_code == [b"engine_error", b"engine_error"]
    [order] = [m for m in letters if m.key == b"poison"]
    assert orjson.loads(order.value)["event_type"] == "order_completed"
    assert dict(order.headers)["mailstream.reason"] == (
        b"processing the event failed: RuntimeError: injected engine failure for poison"
    )
    [timer] = [m for m in letters if m.key == b"sleepy-poison"]
    assert orjson.loads(timer.value)["timer"]["workflow"] == "nudge"
    assert dict(timer.headers)["mailstream.reason"] == (
        b"firing the timer failed: KeyError: 'injected timer failure'"
    )
    assert dict(timer.headers)["mailstream.source.topic"] == b"timer:nudge"

    # The poison user's other events were applied; the failed timer is gone, not retried.
    status, view = await worker.get("/api/users/poison")
    assert status == 200 and view["events"] == {"page_viewed": 1}
    m = await worker.metrics()
    assert metric_sum(m, "mailstream_dead_letters_total", reason="engine_error") == 2
    assert metric_sum(m, "mailstream_events_consumed_total") == len(messages)
    assert worker.alive()
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert log.count("dead-lettered (engine_error)") == 2


# The send command of one user's receipt grows past what the producer may send (as a
# receipt for 21,000 items once did), and delivery.max_message_bytes is out of the way
# (as a future path to the producer might be): the flush fails, not the decision.
OVERSIZED_SEND = """
import mailstream.workflows.apply_effects as apply

_send_command = apply.send_command
_init = apply.EffectsApplier.__init__


def send_command(user, intent, rendered, now):
    command = _send_command(user, intent, rendered, now)
    if user.user_id == "fat":
        command["html"] = "x" * 1_500_000
    return command


def init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.max_message_bytes = 10**9


apply.send_command = send_command
apply.EffectsApplier.__init__ = init
"""


async def test_a_send_command_too_large_to_flush_costs_its_event_not_the_batch(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = FLOWS
    worker = deployment.worker("a")
    worker = with_injected_failures(worker, deployment.root, OVERSIZED_SEND).start()
    await deployment.wait_ready([worker])
    users = [f"user-{i}" for i in range(10)]
    messages = [event("identify", u, {"email": f"{u}@example.com"}) for u in [*users, "fat"]]
    for u in users[:5]:
        messages.append(event("order_completed", u, {"order_id": f"O-{u}", "total": 5}))
    messages.append(event("order_completed", "fat", {"order_id": "F", "total": 5}))
    for u in users[5:]:
        messages.append(event("order_completed", u, {"order_id": f"O-{u}", "total": 5}))
    await produce(deployment, messages)

    ledger = await ledger_of(worker, len(messages), timeout=30)
    assert ledger == {
        "partitions": 4,
        "events": len(messages),
        "processed": len(messages) - 1,
        "dead_lettered": 1,
    }
    [letter] = await deployment.read_topic(deployment.topics["dlq"], 1, timeout=10)
    assert letter.key == b"fat"
    headers = dict(letter.headers)
    assert headers["mailstream.reason_code"] == b"engine_error"
    assert headers["mailstream.reason"].startswith(b"processing the event failed: ")
    assert b"MessageSizeTooLargeError" in headers["mailstream.reason"]

    # Every other receipt is sent once. A failed flush may have written some commands
    # already; their send ids make the second copies duplicates.
    async def queued() -> float:
        m = await worker.metrics()
        return metric_sum(m, "mailstream_deliveries_total", result="queued")

    await wait_for(lambda: _at_least(queued, 10), 15, "10 receipts queued")
    assert await queued() == 10
    commands = await read_json(deployment, deployment.topics["sends_transactional"], 10, 5)
    assert sorted({c["user_id"] for c in commands}) == users
    assert len({c["send_id"] for c in commands}) == 10
    status, fat = await worker.get("/api/users/fat")
    assert status == 200 and fat["events"] == {}  # the order was not applied
    assert worker.alive()
