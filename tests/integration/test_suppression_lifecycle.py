"""Lifting suppressions on a real worker: a user's own opt-in undoes their unsubscribe
but never a bounce or a complaint; an operator lifts those through the CLI and the API,
saying why; the user's history says who did what, and mail flows again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson

from tests.fakes.webhook_signing import sendgrid_sign
from tests.integration.harness import ADMIN_TOKEN, Deployment, Worker, read_json, wait_for
from tests.integration.test_feedback_loop import configure, identify, post, start, suppressions
from tests.integration.test_policy import suppress_cli

USERS = ("unsub", "bouncer", "complainer")


def sendgrid_event(user: str, event: str, sg_id: str, at: float) -> dict[str, Any]:
    return {
        "email": f"{user}@example.com",
        "timestamp": int(at),
        "event": event,
        "type": "bounce",
        "reason": "550 5.1.1 no such mailbox" if event == "bounce" else "",
        "sg_event_id": sg_id,
        "user_id": user,
        "tenant_id": "default",
    }


async def lift_api(worker: Worker, user: str, body: Any, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{worker.url}/api/users/{user}/suppressions/lift"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
            await resp.read()
            return resp.status


async def history(worker: Worker, user: str) -> list[tuple[str, str, str, str]]:
    status, body = await worker.get(f"/api/users/{user}")
    assert status == 200, body
    return [(h["action"], h["reason"], h["source"], h["note"]) for h in body["suppression_history"]]


async def test_an_opt_in_lifts_an_unsubscribe_and_an_operator_a_bounce_or_complaint(
    deployment: Deployment,
) -> None:
    private_key, env = configure(deployment)
    worker = await start(deployment, env)
    await identify(deployment, *USERS)
    now = time.time()
    events = [
        sendgrid_event("unsub", "unsubscribe", "sg-u", now),
        sendgrid_event("bouncer", "bounce", "sg-b", now),
        sendgrid_event("complainer", "spamreport", "sg-c", now),
    ]
    body = orjson.dumps(events)
    headers = sendgrid_sign(private_key, body, now)
    assert await post(worker, "/webhooks/sendgrid", body, headers) == 200

    async def reasons() -> dict[str, set[str]]:
        return {u: set(await suppressions(worker, u)) for u in USERS}

    expected = {"unsub": {"unsubscribe"}, "bouncer": {"hard_bounce"}, "complainer": {"complaint"}}
    await wait_for(lambda: _equal(reasons(), expected), 20, "the three suppressions")

    # each user opts in again from a preference page: only the unsubscribe is theirs to undo
    async with deployment.producer() as p:
        for user in USERS:
            opt_in = {"consent": {"marketing": True}}
            await p.identify(user, opt_in, metadata={"consent_source": "user"})
        await p.flush()
    expected = {"unsub": set(), "bouncer": {"hard_bounce"}, "complainer": {"complaint"}}
    await wait_for(lambda: _equal(reasons(), expected), 20, "the unsubscribe lifted")
    assert (await history(worker, "unsub"))[-1] == ("lifted", "unsubscribe", "user:identify", "")

    # an operator: the API (bearer token only, a reason required) and the CLI
    lift = {"reason": "asked by phone, ticket 1234", "only": "complaint"}
    assert await lift_api(worker, "complainer", lift, None) == 401
    assert await lift_api(worker, "complainer", {"only": "complaint"}, ADMIN_TOKEN) == 400
    assert await lift_api(worker, "complainer", {**lift, "only": "spam"}, ADMIN_TOKEN) == 400
    assert await lift_api(worker, "complainer", lift, ADMIN_TOKEN) == 202
    done = await asyncio.to_thread(
        suppress_cli, deployment, "lift", "bouncer", "--reason", "mailbox fixed"
    )
    assert done.returncode == 0, done.stderr
    refused = await asyncio.to_thread(suppress_cli, deployment, "lift", "bouncer")
    assert refused.returncode == 2 and "--reason" in refused.stderr  # argparse names it
    expected = {u: set() for u in USERS}
    await wait_for(lambda: _equal(reasons(), expected), 20, "every suppression lifted")
    assert await history(worker, "bouncer") == [
        ("suppressed", "hard_bounce", "sendgrid:bounce", ""),
        ("lifted", "hard_bounce", "operator:cli", "mailbox fixed"),
    ]
    assert (await history(worker, "complainer"))[-1] == (
        "lifted",
        "complaint",
        "operator:api",
        "asked by phone, ticket 1234",
    )

    # and marketing goes to all three again
    async with deployment.producer() as p:
        for user in USERS:
            await p.emit("signup", user)
        await p.flush()
    marketing = await read_json(deployment, deployment.topics["sends_marketing"], 3, 30)
    assert sorted(c["user_id"] for c in marketing) == sorted(USERS)

    # an access request: everything held about the user, and an audit line without it
    exported = await asyncio.to_thread(export, deployment, worker, "bouncer", ADMIN_TOKEN)
    assert exported.returncode == 0, exported.stderr
    user = orjson.loads(exported.stdout)["user"]
    assert user["user_id"] == "bouncer" and user["traits"]["email"] == "bouncer@example.com"
    assert [h["action"] for h in user["suppression_history"]] == ["suppressed", "lifted"]
    assert "send_decisions" in user and "deliveries" in user and "enrollments" in user
    log = worker.log_path.read_text(errors="replace")
    audit = [line for line in log.splitlines() if "audit: user 'bouncer'" in line]
    assert len(audit) == 1 and "example.com" not in audit[0], audit
    refused = await asyncio.to_thread(export, deployment, worker, "bouncer", "wrong-token-x" * 2)
    assert refused.returncode != 0 and "answered 401" in refused.stderr


def export(
    deployment: Deployment, worker: Worker, user: str, token: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    config = str(deployment.config_path)
    return subprocess.run(
        [sys.executable, "-m", "mailstream", "--config", config, "users", "export", user]
        + ["--url", worker.url],
        env=env | {"MAILSTREAM_ADMIN_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _equal(got: Any, expected: Any) -> bool:
    return await got == expected
