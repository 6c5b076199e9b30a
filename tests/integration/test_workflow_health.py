"""Workflow health on a real worker: a template that misses a variable for some users is
named with that variable, and the figures match the enrollments and sends produced."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.integration.harness import Deployment, metric_sum, read_json, wait_for

BLOCKS = (
    "{%% block subject %%}%s{%% endblock %%}\n{%% block text %%}%s{%% endblock %%}\n"
    "{%% block html %%}<p>%s</p>{%% endblock %%}\n"
)
FLOWS: dict[str, Any] = {
    "cart_nudge": {
        "trigger": {"event": "cart_updated"},
        "steps": [{"send": "cart_note", "category": "transactional"}],
    },
    "hello": {
        "trigger": {"event": "signup"},
        "goals": [{"event": "order_completed"}],
        "steps": [{"wait": "1s"}, {"send": "hello", "category": "transactional"}],
    },
    "idle": {"trigger": {"event": "never_sent"}, "steps": [{"send": "hello"}]},
}
USERS = [f"shopper-{i}" for i in range(10)]
NO_ITEMS = set(USERS[::4])  # 3 users whose cart event carries no items
BUYERS = set(USERS[1:3])  # reach hello's goal during its wait


async def test_health_names_the_failing_template_and_its_figures_match_the_sends(
    deployment: Deployment,
) -> None:
    templates = deployment.root / "templates"
    templates.mkdir()
    items = "{% for item in context.items %}{{ item.name }} {% endfor %}"
    (templates / "cart_note.j2").write_text(BLOCKS % ("Your cart", items, "cart"))
    (templates / "hello.j2").write_text(BLOCKS % ("Hello", "Hi {{ user.email }}", "Hi"))
    deployment.overrides["templates_dir"] = str(templates)
    deployment.overrides["workflows"] = FLOWS
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    async with deployment.producer() as p:
        for user in USERS:
            await p.identify(user, {"email": f"{user}@example.com"})
            await p.emit("signup", user)
            if user in BUYERS:
                await p.emit("order_completed", user, {"order_id": user})
            cart = {} if user in NO_ITEMS else {"items": [{"name": "mug", "qty": 1}]}
            await p.emit("cart_updated", user, cart)
        await p.flush()

    sends = len(USERS) - len(NO_ITEMS) + len(USERS) - len(BUYERS)
    commands = await read_json(deployment, deployment.topics["sends_transactional"], sends, 30)
    produced = Counter(c["workflow"] for c in commands)
    assert produced == {"cart_nudge": len(USERS) - len(NO_ITEMS), "hello": len(USERS) - len(BUYERS)}

    async def delivered() -> dict[str, Any] | None:
        status, body = await worker.get("/api/workflows/health")
        assert status == 200, body
        flows = body["workflows"]
        done = all(flows[name]["figures"]["sent"] == n for name, n in produced.items())
        return flows if done else None

    flows = await wait_for(delivered, 30, "every send to be delivered and counted")
    cart = flows["cart_nudge"]
    assert cart["figures"]["enrolled"] == len(USERS)
    assert cart["figures"]["renders"] == len(USERS)
    assert cart["figures"]["render_failures"] == [
        {
            "template": "cart_note",
            "renders": len(USERS),
            "failed": len(NO_ITEMS),
            "share": 0.3,
            "reason": "undefined_variable",
            "variable": "items",
        }
    ]
    assert cart["figures"]["dead_letters_by_reason"] == {"template_error": len(NO_ITEMS)}
    assert cart["figures"]["event_to_send_p99_s"] is not None
    assert (
        "template `cart_note` failed 30 % of renders: missing variable `items`"
        in (cart["recommendations"])
    )
    assert cart["score"] == 20 and cart["category"] == "critical"  # 30 % of its email lost

    hello = flows["hello"]
    assert hello["figures"]["enrolled"] == len(USERS)
    assert hello["figures"]["exited_goal"] == len(BUYERS)
    assert hello["figures"]["timers_fired"] == len(USERS) - len(BUYERS)
    assert hello["figures"]["render_failures"] == [] and hello["score"] is not None
    assert flows["idle"] == {
        "score": None,
        "category": "no data",
        "recommendations": [],
        "figures": flows["idle"]["figures"],
    }

    # The figures are the worker's own counters, and the dead letters are on the topic.
    metrics = await worker.metrics()
    assert metric_sum(
        metrics, "mailstream_template_renders_total", template="cart_note", variable="items"
    ) == len(NO_ITEMS)
    letters = await deployment.read_topic(deployment.topics["dlq"], len(NO_ITEMS))
    assert len(letters) == len(NO_ITEMS)

    status, page = await worker.get("/")
    assert status == 200 and 'id="workflow-health"' in page
    assert 'data-workflow="cart_nudge"' in page and 'data-workflow="idle"' in page
    assert "failed 30 % of renders: missing variable `items`" in page
    status, _ = await worker.get("/api/workflows/health", token=None)
    assert status == 401
