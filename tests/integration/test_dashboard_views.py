"""What the dashboard and a user's page show on a real worker: a user whose address is
on the global list is shown as suppressed (never "not suppressed" beside a
globally_suppressed drop), the lag's high-water marks are the topic's real ends, and the
funnel names steps by their ids."""

from __future__ import annotations

import time
from typing import Any

from mailstream.config.load import load_config
from mailstream.suppression.entries import Suppression
from mailstream.suppression.global_list import publish
from tests.integration.harness import Deployment, wait_for

FLOWS: dict[str, Any] = {
    "hello": {
        "trigger": {"event": "signup"},
        "steps": [
            {"id": "welcome_mail", "send": "welcome", "category": "transactional"},
            {"id": "pause", "wait": "1h"},
            {"send": "tips", "category": "marketing"},
        ],
    }
}


async def test_user_page_lag_and_funnel_agree_with_what_happened(deployment: Deployment) -> None:
    deployment.overrides["workflows"] = FLOWS
    deployment.overrides["web"] = {"funnel_every": "5s"}
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    config = load_config(deployment.config_path, env={})
    entry = Suppression("complaint", "test", int(time.time() * 1000))
    await publish(config, [("blocked@example.com", entry)])

    async def listed() -> bool:
        health = await worker.health()
        return bool(health and (health["suppression_list"] or 0) >= 1)

    await wait_for(listed, 20, "the worker to read the global suppression")

    users = [f"u{i}" for i in range(12)]
    async with deployment.producer() as p:
        await p.identify("blocked", {"email": "Blocked@example.com"})
        await p.emit("signup", "blocked")
        for user in users:  # batched: several records per partition per request
            await p.identify(user, {"email": f"{user}@example.com"})
            await p.emit("signup", user)
            await p.emit("page_viewed", user)
        await p.flush()
    produced = 2 + 3 * len(users)

    async def decided() -> Any:
        status, view = await worker.get("/api/users/blocked")
        return status == 200 and view["send_decisions"] and view

    view = await wait_for(decided, 30, "the blocked user's send decision")
    assert view["send_decisions"][0]["reason"] == "globally_suppressed"
    assert view["global_suppression"]["reason"] == "complaint"
    status, page = await worker.get("/users/blocked")
    assert status == 200 and "globally_suppressed" in page
    assert "not suppressed" not in page
    assert "complaint (global list, by address)" in page

    # u1's events are in another partition, which may not have been read yet
    async def u1_read() -> bool:
        status, _ = await worker.get("/api/users/u1")
        return status == 200

    await wait_for(u1_read, 30, "u1's events to be read", interval=0.2)
    _, other = await worker.get("/users/u1")
    assert "not suppressed" in other

    async def caught_up() -> Any:
        status, board = await worker.get("/api/dashboard")
        lag = board["lag"]
        applied = sum(p["applied"] for p in lag.values())
        return applied == produced and board

    await wait_for(caught_up, 30, "every event applied")
    # A second round, once the first is applied: Faust's consumer, paused on the events
    # topic while the direct reader reads it, kept the first round's high-water marks.
    async with deployment.producer() as p:
        for user in users:
            await p.emit("page_viewed", user)
        await p.flush()
    produced += len(users)
    board = await wait_for(caught_up, 30, "the second round applied")
    for partition, lag in board["lag"].items():
        assert lag["highwater"] is not None, partition
        assert lag["highwater"] == lag["applied"] and lag["lag"] == 0, (partition, lag)
    assert sum(lag["highwater"] for lag in board["lag"].values()) == produced

    enrolled = len(users) + 1  # the blocked user too: a dropped send does not stop it

    async def counted() -> Any:
        _, board = await worker.get("/api/dashboard")
        return board["funnel"].get("hello", {}).get("waiting") == {"1": enrolled} and board

    board = await wait_for(counted, 30, "the enrollments waiting at the pause")
    assert board["funnel"]["hello"]["steps"] == {"1": "pause"}
    _, html = await worker.get("/")
    assert f'<span data-step="1">pause</span>: {enrolled}' in html
