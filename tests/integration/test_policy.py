"""Throttling, consent, quiet hours and the global suppression list on a real worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.harness import Deployment, Worker, metric_sum, read_json, wait_for

CART = [{"name": "mug", "qty": 2}]
CART_AND_RECEIPT: dict[str, Any] = {
    "cart": {
        "trigger": {"event": "cart_updated"},
        "entry": "always",
        "steps": [{"wait": "1s"}, {"send": "cart_reminder", "category": "marketing"}],
    },
    "receipt": {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [{"send": "order_receipt", "category": "transactional"}],
    },
}


def clock(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S")


async def decisions(worker: Worker, user: str) -> list[dict[str, Any]]:
    status, body = await worker.get(f"/api/users/{user}")
    assert status == 200, body
    return list(body["send_decisions"])


async def test_a_burst_of_page_views_is_throttled_and_the_accounting_adds_up(
    deployment: Deployment,
) -> None:
    deployment.overrides["throttling"] = {"page_viewed": {"limit": 25, "per": "1h"}}
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    burst = 10_000
    async with deployment.producer() as p:
        await p.identify("clicker", {"email": "clicker@example.com"})
        for i in range(burst):
            await p.emit("page_viewed", "clicker", {"path": f"/p/{i}"})
        await p.emit("page_viewed", "bystander", {"path": "/"})
        await p.flush()

    async def consumed_all() -> dict[str, float] | None:
        m = await worker.metrics()
        done = metric_sum(m, "mailstream_events_consumed_total") >= burst + 2
        return m if done else None

    m = await wait_for(consumed_all, 90, "the burst to be consumed")
    outcome = "mailstream_events_total"
    processed = metric_sum(m, outcome, outcome="processed")
    throttled = metric_sum(m, outcome, outcome="throttled", event_type="page_viewed")
    assert throttled == burst - 25
    assert processed == 25 + 1 + 1  # the identify, 25 views, the bystander's view
    assert metric_sum(m, outcome) == metric_sum(m, "mailstream_events_consumed_total")
    status, clicker = await worker.get("/api/users/clicker")
    assert status == 200 and clicker["events"] == {"page_viewed": 25}
    status, bystander = await worker.get("/api/users/bystander")
    assert bystander["events"] == {"page_viewed": 1}, "one user's limit is not another's"


async def test_no_marketing_without_consent_but_the_receipt_goes_out(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = CART_AND_RECEIPT
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    async with deployment.producer() as p:
        for user, consent in (("keen", True), ("refuser", False), ("silent", None)):
            traits: dict[str, Any] = {"email": f"{user}@example.com"}
            if consent is not None:
                traits["consent"] = {"marketing": consent}
            await p.identify(user, traits)
            await p.emit("cart_updated", user, {"items": CART})
            await p.emit("order_completed", user, {"order_id": f"o-{user}", "total": 3})
        await p.flush()

    receipts = await read_json(deployment, deployment.topics["sends_transactional"], 3, 30)
    assert sorted(c["user_id"] for c in receipts) == ["keen", "refuser", "silent"]
    # Opt-in by default: only a yes lets marketing through.
    marketing = await read_json(deployment, deployment.topics["sends_marketing"], 1, 20)
    assert [(c["user_id"], c["template"]) for c in marketing] == [("keen", "cart_reminder")]
    for user in ("refuser", "silent"):
        reasons = {
            (d["template"], d["decision"], d["reason"]) for d in await decisions(worker, user)
        }
        assert reasons == {
            ("order_receipt", "send", "ok"),
            ("cart_reminder", "drop", "no_consent"),
        }
    m = await worker.metrics()
    name = "mailstream_send_decisions_total"
    assert metric_sum(m, name, category="marketing", reason="no_consent") == 2


async def test_quiet_hours_hold_marketing_until_the_window_ends(deployment: Deployment) -> None:
    now = datetime.now(UTC)
    # Everyone's default window (UTC) holds now and lasts two hours more ...
    deployment.overrides["policy"] = {
        "quiet_hours": {
            "start": clock(now - timedelta(hours=1)),
            "end": clock(now + timedelta(hours=2)),
        }
    }
    deployment.overrides["workflows"] = {
        "hello": {
            "trigger": {"event": "signup"},
            "steps": [
                {"send": "welcome", "category": "transactional"},
                {"send": "tips", "category": "marketing"},
            ],
        }
    }
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    # ... but one user's own window ends a few seconds from now.
    end = datetime.now(UTC) + timedelta(seconds=6)
    own_window = f"{clock(end - timedelta(hours=1))}-{clock(end)}"
    async with deployment.producer() as p:
        for user, extra in (("night-owl", {}), ("early-bird", {"quiet_hours": own_window})):
            traits = {"email": f"{user}@example.com", "consent": {"marketing": True}, **extra}
            await p.identify(user, {**traits, "timezone": "UTC"})
            await p.emit("signup", user)
        await p.flush()

    welcome = await read_json(deployment, deployment.topics["sends_transactional"], 2, 30)
    assert sorted(c["user_id"] for c in welcome) == ["early-bird", "night-owl"]

    async def held(user: str) -> dict[str, Any] | None:
        found = [d for d in await decisions(worker, user) if d["template"] == "tips"]
        return found[0] if found else None

    first = await wait_for(lambda: held("early-bird"), 20, "the tips send to be decided")
    assert (first["decision"], first["reason"]) == ("defer", "quiet_hours")
    assert abs(first["until"] - end.timestamp() * 1000) < 1000
    tips = await read_json(deployment, deployment.topics["sends_marketing"], 1, 30)
    assert [c["user_id"] for c in tips] == ["early-bird"]
    assert tips[0]["created_at"] >= first["until"], "sent when the window ended, not before"

    owl = await held("night-owl")
    assert owl is not None and owl["decision"] == "defer"
    window_end = (now + timedelta(hours=2)).replace(microsecond=0).timestamp() * 1000
    assert abs(owl["until"] - window_end) < 1000
    status, body = await worker.get("/api/users/night-owl")
    assert [d["template"] for d in body["deferred_sends"]] == ["tips"]


def suppress_cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mailstream",
            "--config",
            str(deployment.config_path),
            "suppress",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_an_imported_suppressed_address_gets_nothing(deployment: Deployment) -> None:
    deployment.overrides["workflows"] = CART_AND_RECEIPT | {
        "welcome": {
            "trigger": {"event": "signup"},
            "steps": [{"send": "welcome", "category": "transactional"}],
        }
    }
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    listed = [f"blocked-{i}@example.com" for i in range(50)]
    csv = deployment.root / "do-not-mail.csv"
    csv.write_text("Email,Reason\n" + "".join(f"  {a.upper()} ,import\n" for a in listed))
    done = await asyncio.to_thread(suppress_cli, deployment, "import", str(csv))
    assert done.returncode == 0, done.stderr

    async def list_loaded() -> bool:
        health = await worker.health()
        return bool(health and health.get("suppression_list") == len(listed))

    await wait_for(list_loaded, 20, "the worker to read the imported list")
    async with deployment.producer() as p:
        for user, email in (
            ("blocked", "Blocked-7@Example.com"),
            ("allowed", "allowed@example.com"),
        ):
            await p.identify(user, {"email": email, "consent": {"marketing": True}})
            await p.emit("signup", user)
            await p.emit("cart_updated", user, {"items": CART})
            await p.emit("order_completed", user, {"order_id": f"o-{user}", "total": 3})
        await p.flush()

    transactional = await read_json(deployment, deployment.topics["sends_transactional"], 2, 30)
    marketing = await read_json(deployment, deployment.topics["sends_marketing"], 1, 20)
    assert sorted(c["template"] for c in transactional) == ["order_receipt", "welcome"]
    assert {c["user_id"] for c in transactional + marketing} == {"allowed"}
    expected = {
        ("welcome", "globally_suppressed"),
        ("order_receipt", "globally_suppressed"),
        ("cart_reminder", "globally_suppressed"),
    }

    async def all_dropped() -> bool:
        got = {(d["template"], d["reason"]) for d in await decisions(worker, "blocked")}
        return got == expected

    await wait_for(all_dropped, 20, "the blocked user's three sends to be dropped")
    listing = await asyncio.to_thread(suppress_cli, deployment, "list")
    assert listing.returncode == 0 and "blocked-7@example.com" in listing.stdout
