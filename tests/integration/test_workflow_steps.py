"""Digests, segments and field-change triggers on one real worker, down to the emails the
outbox provider wrote."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from tests.integration.harness import Deployment, metric_sum, wait_for

WINDOW = "3s"
COMMENTS = 7

WORKFLOWS: dict[str, Any] = {
    # Signing up puts the user in the segment the comments digest is for.
    "join": {
        "trigger": {"event": "signup"},
        "steps": [{"segment": {"add": "commenters"}}],
    },
    "comments": {
        "trigger": {"event": "comment_added", "where": {"in_segment": "commenters"}},
        "entry": "always",
        "steps": [
            {
                "digest": {
                    "event": "comment_added",
                    "window": WINDOW,
                    "max_items": 20,
                    "template": "comments_digest",
                }
            }
        ],
    },
    # A receipt when an order (each on its own) becomes shipped, and a segment for it.
    "shipped": {
        "trigger": {
            "event": "order_updated",
            "entity": "order_id",
            "changed": {"status": {"to": "shipped"}},
        },
        "entry": "always",
        "steps": [
            {"segment": {"add": "shipped_to", "remove": "commenters"}},
            {"send": "order_receipt", "category": "transactional"},
        ],
    },
}


def emails(outbox: Path) -> list[EmailMessage]:
    found = []
    for path in sorted(outbox.glob("*/*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def test_a_digest_of_seven_comments_is_one_email_and_changes_fire_once(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = WORKFLOWS
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    async with deployment.producer() as p:
        for user in ("ada", "bob"):
            consent = {"marketing": True}
            await p.identify(user, {"email": f"{user}@example.com", "consent": consent})
        await p.emit("signup", "ada")  # bob never signs up: not in the segment
        for n in range(1, COMMENTS + 1):
            comment = {"author": f"author-{n}", "text": f"comment number {n}"}
            await p.emit("comment_added", "ada", comment, event_id=f"ada-comment-{n}")
            await p.emit("comment_added", "bob", comment)
        # A replay of a comment already collected is not listed twice.
        await p.emit("comment_added", "ada", {"text": "again"}, event_id="ada-comment-3")
        for order, status in [
            ("A", "pending"),
            ("A", "shipped"),
            ("A", "shipped"),
            ("B", "shipped"),
        ]:
            await p.emit("order_updated", "ada", {"order_id": order, "status": status, "total": 5})
        await p.flush()

    outbox = deployment.root / "outbox"

    async def three_emails() -> list[EmailMessage]:
        found = emails(outbox)
        return found if len(found) >= 3 else []

    found = await wait_for(three_emails, 40, "the digest and two receipts in the outbox")
    digests = [m for m in found if "new comments" in str(m["Subject"])]
    receipts = [m for m in found if "receipt" in str(m["Subject"])]
    assert len(digests) == 1, [str(m["Subject"]) for m in found]
    [digest] = digests
    assert digest["To"] == "ada@example.com"
    assert digest["Subject"] == f"{COMMENTS} new comments"
    text = body(digest)
    for n in range(1, COMMENTS + 1):
        assert f"author-{n}" in text and f"comment number {n}" in text
    assert text.count("comment number") == COMMENTS and "again" not in text
    assert sorted(str(m["Subject"]) for m in receipts) == [
        "Your receipt for order A",
        "Your receipt for order B",
    ]

    # The digest's send command is made durable before the user record it changes, so the
    # email can be out before the record is readable.
    async def digest_recorded() -> Any:
        status, ada = await worker.get("/api/users/ada")
        assert status == 200
        return ada if "comments" not in ada["enrollments"] else None

    ada = await wait_for(digest_recorded, 10, "the digest was sent: the next one starts anew")
    assert set(ada["segments"]) == {"shipped_to"}, "added by the change, commenters removed"
    assert ada["last_seen_fields"] == {
        "order_updated/order_id": {"A": {"status": "shipped"}, "B": {"status": "shipped"}}
    }
    status, page = await worker.get("/users/ada")
    assert status == 200 and "shipped_to" in page

    # Nothing more arrives: no second digest, nothing for bob, no third receipt.
    m = await worker.metrics()
    sent = metric_sum(m, "mailstream_workflow_transitions_total", transition="digest_sent")
    collected = metric_sum(
        m, "mailstream_workflow_transitions_total", transition="digest_collected"
    )
    assert (sent, collected) == (1, COMMENTS)
    assert len(emails(outbox)) == 3
