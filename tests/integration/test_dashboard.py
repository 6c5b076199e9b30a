"""The operator's view on two real workers: figures gathered from both, users answered by
their owner, access refused without the token, metrics that promtool accepts and that hold
every series the alert rules and the Grafana dashboard in deploy/ use, and a real browser
that logs in and finds a user."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka.partitioner import DefaultPartitioner

from mailstream.web.figures import FIGURES
from tests.integration.harness import (
    ADMIN_TOKEN,
    Deployment,
    Worker,
    metric_sum,
    parse_metrics,
    wait_for,
)
from tests.system_packages import install_debian_package
from tests.unit.test_deploy_files import deploy_metric_names, exported_names

FLOWS: dict[str, Any] = {
    "hello": {
        "trigger": {"event": "signup"},
        "steps": [
            {"send": "welcome", "category": "transactional"},
            {"send": "tips", "category": "marketing"},
        ],
    },
    "cart": {
        "trigger": {"event": "cart_updated"},
        "entry": "always",
        "goals": [{"event": "order_completed"}],
        "steps": [{"wait": "1h"}, {"send": "cart_reminder"}],
    },
}
USERS = [f"person-{i}" for i in range(40)]


async def two_workers_with_traffic(deployment: Deployment) -> tuple[Worker, Worker]:
    deployment.overrides["workflows"] = FLOWS
    deployment.overrides["throttling"] = {"page_viewed": {"limit": 3, "per": "1h"}}
    deployment.overrides["web"] = {"funnel_every": "5s"}  # the least: the funnel's count
    a, b = deployment.worker("a").start(), deployment.worker("b").start()
    await deployment.wait_ready([a, b])
    async with deployment.producer() as p:
        for i, user in enumerate(USERS):
            consent = {"marketing": i % 3 != 0}
            await p.identify(
                user, {"email": f"{user}@example.com", "first_name": "Ada", "consent": consent}
            )
            await p.emit("signup", user)
            await p.emit("cart_updated", user, {"items": [{"name": "mug", "qty": 1}]})
            for n in range(5):
                await p.emit("page_viewed", user, {"path": f"/{n}"})
            if i % 4 == 0:
                await p.emit("order_completed", user, {"order_id": f"o{i}", "total": 5})
        await p.send_raw(b"person-0", b"{not json")
        await p.flush()
    expected = len(USERS) * 8 + len(USERS[::4]) + 1

    async def consumed() -> bool:
        total = 0.0
        for w in (a, b):
            total += metric_sum(await w.metrics(), "mailstream_events_consumed_total")
        return total >= expected

    await wait_for(consumed, 60, "both workers to consume the traffic")
    return a, b


async def settled_metrics(workers: list[Worker]) -> list[dict[str, float]]:
    """Every worker's metrics, once two readings a second apart agree (sends are done)."""
    previous: list[dict[str, float]] | None = None
    for _ in range(60):
        current = [await w.metrics() for w in workers]
        names = {name for name, _ in FIGURES.values()}
        keys = [{k: v for k, v in m.items() if k.partition("{")[0] in names} for m in current]
        if keys == previous:
            return current
        previous = keys
        await asyncio.sleep(1.0)
    raise AssertionError("the metrics did not settle")


async def check_metrics_with_promtool(workers: list[Worker]) -> None:
    """Every worker's /metrics passes promtool and has the metrics operators need: those
    the alert rules and the dashboard in deploy/ use among them."""
    promtool = install_debian_package("promtool", "prometheus")
    texts = []
    for worker in workers:
        status, text = await worker.get("/metrics", token=None)
        assert status == 200
        texts.append(text)
    names = {k.partition("{")[0] for text in texts for k in parse_metrics(text)}
    for needed in (
        "mailstream_events_total",
        "mailstream_send_decisions_total",
        "mailstream_sends_total",
        "mailstream_provider_request_seconds_bucket",
        "mailstream_event_to_send_seconds_bucket",
        "mailstream_timers_pending",
        "mailstream_timer_lag_seconds_bucket",
        "mailstream_dead_letters_total",
        "faust_messages_received_total",
        "faust_events_runtime_seconds_bucket",
    ):
        assert needed in names, needed
    exported = set().union(*(exported_names(text) for text in texts))
    unknown = deploy_metric_names() - exported
    assert not unknown, f"deploy/ uses series no worker serves: {sorted(unknown)}"
    # ?name[]=: only the samples named, as Prometheus' own client serves them
    status, text = await workers[0].get(
        "/metrics?name[]=mailstream_sends_total&name[]=mailstream_timers_pending", token=None
    )
    assert status == 200
    only = {k.partition("{")[0] for k in parse_metrics(text)}
    assert only == {"mailstream_sends_total", "mailstream_timers_pending"}, only
    for text in texts:
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_the_dashboard_adds_up_both_workers_and_the_metrics_pass_promtool(
    deployment: Deployment,
) -> None:
    a, b = await two_workers_with_traffic(deployment)
    metrics = await settled_metrics([a, b])
    status, board = await a.get("/api/dashboard")
    assert status == 200 and board["workers"] == 2 and board["missing_workers"] == 0
    for figure, (name, labels) in FIGURES.items():
        summed = sum(metric_sum(m, name, **labels) for m in metrics)
        assert board["totals"][figure] == summed, figure
    assert board["totals"]["consumed"] == len(USERS) * 8 + len(USERS[::4]) + 1
    assert board["totals"]["throttled"] == len(USERS) * 2
    assert board["totals"]["no_consent"] > 0 and board["totals"]["sent"] > 0
    assert sorted(int(p) for p in board["lag"]) == [0, 1, 2, 3]
    assert board["funnel"]["cart"]["enrolled"] == len(USERS)
    assert board["funnel"]["cart"]["exited_goal"] == len(USERS[::4])
    # Workflow health adds up both workers' figures too (see test_workflow_health.py).
    health = board["workflow_health"]["workflows"]
    assert health["cart"]["figures"]["enrolled"] == len(USERS)
    assert health["cart"]["figures"]["exited_goal"] == len(USERS[::4])
    assert health["hello"]["figures"]["sent"] == board["totals"]["sent"]  # the only sender
    codes = [d["reason_code"] for d in board["dead_letters"]]
    assert "not_json" in codes, board["dead_letters"]

    async def counted() -> bool:
        status, board = await b.get("/api/dashboard")
        return board["funnel"]["cart"]["waiting"] == {"0": len(USERS) - len(USERS[::4])}

    await wait_for(counted, 90, "the enrollments waiting at the cart's first step")

    # A user owned by b, asked on a: the owner's data, on the page and in the API.
    owned_by_b = set((await b.get("/health"))[1]["partitions"])
    partitioner = DefaultPartitioner()
    user = next(
        u for u in USERS if partitioner(u.encode(), [0, 1, 2, 3], [0, 1, 2, 3]) in owned_by_b
    )
    status_a, via_a = await a.get(f"/api/users/{user}")
    assert status_a == 200 and via_a["user_id"] == user and via_a["traits"]["first_name"] == "Ada"
    assert via_a["traits"]["email"] != f"{user}@example.com", "masked unless asked"
    status_a, full = await a.get(f"/api/users/{user}", full="1")
    assert full["traits"]["email"] == f"{user}@example.com"
    status, page = await a.get(f"/users/{user}")
    assert status == 200 and "Ada" in page and "welcome" in page
    await check_metrics_with_promtool([a, b])


async def test_without_the_token_the_views_refuse_and_show_nothing(deployment: Deployment) -> None:
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    async with deployment.producer() as p:
        await p.identify("secretive", {"email": "secret@example.com", "first_name": "Zed"})
        await p.flush()

    async def known() -> bool:  # so that what the refusals hide is there to hide
        status, _ = await worker.get("/api/users/secretive")
        return status == 200

    await wait_for(known, 20, "the user")
    for path in ("/", "/api/dashboard", "/api/users/secretive", "/users/secretive"):
        for token in (None, "wrong-token-of-good-length"):
            status, body = await worker.get(path, token=token)
            assert status == 401, (path, token)
            assert "Zed" not in str(body) and "secret@" not in str(body)
    # the login form refuses a post without its CSRF cookie
    async with aiohttp.ClientSession() as session:
        form = {"token": ADMIN_TOKEN, "csrf": "forged"}
        async with session.post(worker.url + "/login", data=form, allow_redirects=False) as resp:
            assert resp.status == 403 and "mailstream_session" not in resp.cookies
    status, _ = await worker.get("/health", token=None)
    assert status == 200


async def test_a_browser_logs_in_finds_a_user_and_opens_the_page(
    deployment: Deployment, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    chromium = install_debian_package("chromium", "chromium")
    a, b = await two_workers_with_traffic(deployment)
    user = USERS[7]
    shot = Path(os.environ.get("MAILSTREAM_SCREENSHOTS", tmp_path)) / "user-page.png"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = await browser.new_page()
            response = await page.goto(a.url + "/users/" + user)
            assert response is not None and response.status == 401
            assert "Ada" not in await page.content()
            await page.fill("input[name=token]", ADMIN_TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_selector("#accounting")
            await page.fill("input[name=user_id]", user)
            await page.click("header form[role=search] button")
            await page.wait_for_selector("#traits")
            content = await page.content()
            assert user in content and "Ada" in content
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    assert shot.stat().st_size > 10_000
