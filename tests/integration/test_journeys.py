"""The shipped journeys end to end on a real worker, with waits shortened to seconds."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import pytest

from tests.integration.harness import Deployment, metric_sum, read_json, wait_for

# The shipped journeys (mailstream/config/default_workflows.yaml) with hours and days as seconds.
JOURNEYS: dict[str, Any] = {
    "welcome": {
        "trigger": {"event": "signup"},
        "steps": [
            {"send": "welcome", "category": "transactional"},
            {"wait": "2s"},
            {"branch": {"if": {"field": "user.events.activated", "op": "exists"}, "then": "exit"}},
            {"send": "tips"},
        ],
    },
    "abandoned_cart": {
        "trigger": {"event": "cart_updated", "where": {"field": "event.items", "op": "exists"}},
        "entry": "always",
        "goals": [{"event": "order_completed"}],
        "steps": [
            {"wait": "2s"},
            {"send": "cart_reminder"},
            {"wait": "2s"},
            {"send": "cart_reminder_discount"},
        ],
    },
    "order_receipt": {
        "trigger": {"event": "order_completed"},
        "entry": "always",
        "steps": [{"send": "order_receipt", "category": "transactional", "priority": "high"}],
    },
    "reengagement": {
        "trigger": {"inactive_for": "3s"},
        "steps": [{"send": "reengagement"}],
    },
}
CART = [{"name": "mug", "qty": 2}, {"name": "poster", "qty": 1}]


async def identify(producer: Any, user: str, **traits: Any) -> None:
    """A user with an address who agreed to marketing (the default policy is opt-in)."""
    traits = {"email": f"{user}@example.com", "consent": {"marketing": True}, **traits}
    await producer.identify(user, traits)


def by_user(commands: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in commands:
        out.setdefault(c["user_id"], []).append(c["template"])
    return out


async def test_the_four_journeys_end_to_end(deployment: Deployment) -> None:
    deployment.overrides["workflows"] = JOURNEYS
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    topics = deployment.topics
    async with deployment.producer() as p:
        for user in ("abandoner", "buyer", "newbie", "activated-newbie", "sleeper"):
            await identify(p, user, first_name=user.title())
        await p.emit("cart_updated", "abandoner", {"items": CART})
        await p.emit("cart_updated", "buyer", {"items": CART})
        await p.emit("order_completed", "buyer", {"order_id": "A-17", "total": 42})
        await p.emit("signup", "newbie")
        await p.emit("signup", "activated-newbie")
        await p.emit("activated", "activated-newbie")
        await p.emit("page_viewed", "sleeper", {"path": "/"})
        await p.flush()

    # Marketing: both cart reminders for the abandoned cart and none for the completed one,
    # tips unless activated, and everyone goes quiet for 3 s, so everyone is re-engaged.
    marketing = await read_json(deployment, topics["sends_marketing"], 8, timeout=40)
    got = {user: sorted(templates) for user, templates in by_user(marketing).items()}
    assert got == {
        "abandoner": ["cart_reminder", "cart_reminder_discount", "reengagement"],
        "buyer": ["reengagement"],
        "newbie": ["reengagement", "tips"],
        "activated-newbie": ["reengagement"],
        "sleeper": ["reengagement"],
    }

    reminder = next(c for c in marketing if c["template"] == "cart_reminder")
    assert "mug" in reminder["text"] and "poster" in reminder["html"]
    assert reminder["to"] == "abandoner@example.com" and reminder["category"] == "marketing"

    transactional = await read_json(deployment, topics["sends_transactional"], 3, timeout=10)
    got_tx = by_user(transactional)
    assert got_tx.get("buyer") == ["order_receipt"]
    assert got_tx.get("newbie") == ["welcome"]
    receipt = got_tx and next(c for c in transactional if c["template"] == "order_receipt")
    assert "A-17" in receipt["text"] and receipt["priority"] == "high"
    ids = [c["send_id"] for c in marketing + transactional]
    assert len(ids) == len(set(ids)), "every send command has its own send_id"

    status, user = await worker.get("/api/users/buyer")
    assert status == 200 and "abandoned_cart" not in user["enrollments"]


@pytest.mark.parametrize("successor", ["restarted", "fresh-worker"])
async def test_sigkill_while_a_thousand_users_wait_fires_each_wait_once(
    deployment: Deployment, successor: str
) -> None:
    deployment.overrides["workflows"] = {
        "cart": {
            "trigger": {"event": "cart_updated"},
            "entry": "always",
            "steps": [{"wait": "8s"}, {"send": "cart_reminder"}],
        }
    }
    users = [f"waiting-{i}" for i in range(1000)]
    a = deployment.worker("a").start()
    await deployment.wait_ready([a])
    async with deployment.producer() as p:
        for user in users:
            await identify(p, user)
            await p.emit("cart_updated", user, {"items": CART})
        await p.flush()

    async def all_waiting() -> bool:
        m = await a.metrics()
        name = "mailstream_workflow_transitions_total"
        return metric_sum(m, name, workflow="cart", transition="enrolled") >= len(users)

    await wait_for(all_waiting, 60, "1,000 users to be waiting")
    a.kill(signal.SIGKILL)
    # The same worker on its own files, or another one that recovers from the changelogs.
    if successor == "restarted":
        after = deployment.worker("a", data_dir=a.data_dir).start()
    else:
        after = deployment.worker("b").start()
    await deployment.wait_ready([after])

    sends = await read_json(deployment, deployment.topics["sends_marketing"], len(users), 60)
    per_id = Counter(c["send_id"] for c in sends)
    if len(per_id) != len(users):
        missing = sorted(set(users) - {c["user_id"] for c in sends})
        states = [await after.get(f"/api/users/{u}") for u in missing[:3]]
        m = await after.metrics()
        raise AssertionError(
            f"{len(per_id)} of {len(users)} waits fired; missing e.g. {missing[:3]}: {states};"
            f" fired {metric_sum(m, 'mailstream_timers_fired_total')},"
            f" replayed {metric_sum(m, 'mailstream_events_replayed_total')}"
        )
    assert max(per_id.values()) == 1, "no send command is duplicated"
    assert {c["user_id"] for c in sends} == set(users)


async def test_a_template_error_dead_letters_that_send_and_the_rest_go_on(
    deployment: Deployment,
) -> None:
    templates = deployment.root / "templates"
    templates.mkdir()
    blocks = "{%% block subject %%}%s{%% endblock %%}\n{%% block text %%}%s{%% endblock %%}\n"
    blocks += "{%% block html %%}<p>%s</p>{%% endblock %%}\n"
    (templates / "good.j2").write_text(blocks % ("Hello", "Hi {{ user.email }}", "Hi"))
    (templates / "broken.j2").write_text(blocks % ("Hello", "Total: {{ context.total }}", "x"))
    deployment.overrides["templates_dir"] = str(templates)
    deployment.overrides["workflows"] = {
        "greet": {"trigger": {"event": "signup"}, "steps": [{"send": "good"}]},
        "bill": {"trigger": {"event": "billed"}, "steps": [{"send": "broken"}]},
    }
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    async with deployment.producer() as p:
        await identify(p, "x")
        await identify(p, "y")
        await p.emit("billed", "x", {"amount": 3})
        await p.emit("signup", "y")
        await p.flush()

    sent = await read_json(deployment, deployment.topics["sends_marketing"], 1, timeout=30)
    assert [(c["user_id"], c["template"]) for c in sent] == [("y", "good")]
    letters = await deployment.read_topic(deployment.topics["dlq"], 1, timeout=30)
    assert len(letters) == 1
    headers = {k: v.decode() for k, v in letters[0].headers}
    assert headers["mailstream.reason_code"] == "template_error"
    assert "template 'broken' line 2" in headers["mailstream.reason"]
    assert "total" in headers["mailstream.reason"]
    assert worker.alive()
