"""What the send path writes: signed send commands, and a dead letter (not a send) for a
message that renders too large; the sends after it still go out."""

from __future__ import annotations

from typing import Any, cast

import orjson

from mailstream.core.cluster_trust import ClusterKey
from mailstream.core.user_state import UserState
from mailstream.delivery.send_command import verified_send_command
from mailstream.state.rocksdb_store import PartitionStore
from mailstream.state.staged_flush import Outbox
from mailstream.workflows.apply_effects import EffectsApplier
from mailstream.workflows.engine import Effects, SendIntent
from mailstream.workflows.health_labels import render_failure
from mailstream.workflows.template_files import TemplateError
from mailstream.workflows.templates import DEFAULT_TEMPLATE_DIR, Templates

CLUSTER = ClusterKey("unit-test-cluster-secret-0123456789abcdef")
TOPICS = {"transactional": "sends.t", "marketing": "sends.m"}


def receipt(send_id: str, items: int) -> SendIntent:
    # the shape of an order_completed a shop sends: 63 KB for 21,000 items
    event = {
        "order_id": f"o-{send_id}",
        "total": "12.50",
        "items": [{} for _ in range(items)],  # each rendered as "1 x item"
    }
    return SendIntent(
        send_id=send_id,
        workflow="receipts",
        enrollment_id="e1",
        step=0,
        template="order_receipt",
        category="transactional",
        priority="high",
        context={},
        event=event,
    )


def apply_sends(*intents: SendIntent, limit: int = 900_000) -> list[Any]:
    applier = EffectsApplier(
        Templates(DEFAULT_TEMPLATE_DIR),
        cast(PartitionStore, None),  # no timers in these effects
        TOPICS,
        "dlq",
        "hooks",
        cluster=CLUSTER,
        max_message_bytes=limit,
    )
    user = UserState("default", "u1", traits={"email": "ada@example.com"})
    outbox = Outbox()
    applier.apply(outbox, 3, b"default\x1fu1", user, Effects(sends=list(intents)), 99)
    return outbox.messages


def test_a_send_command_is_signed_for_its_user() -> None:
    [(topic, key, value, _, _)] = apply_sends(receipt("s1", 2))
    assert (topic, key) == ("sends.t", b"u1")
    signed = verified_send_command(CLUSTER, key, value)
    assert isinstance(signed, bytes), signed
    command = orjson.loads(signed)
    assert command["send_id"] == "s1" and command["to"] == "ada@example.com"
    assert "Order: o-s1" in command["text"]


def test_a_message_rendering_over_the_limit_is_dead_lettered_and_the_next_goes_out() -> None:
    huge = receipt("huge", 21_000)
    assert len(orjson.dumps(huge.event)) < 64 * 1024  # a valid event, well under 1 MB
    letter, sent = apply_sends(huge, receipt("small", 2))

    topic, key, value, headers, _ = letter
    assert (topic, key) == ("dlq", b"u1")
    found = dict(headers or [])
    assert found["mailstream.reason_code"] == b"message_too_large"
    assert b"over delivery.max_message_bytes (900000)" in found["mailstream.reason"]
    doc = orjson.loads(value)
    assert doc["send_id"] == "huge" and doc["template"] == "order_receipt"
    assert len(value) < 2048  # the dead letter holds the reason, not the message

    assert sent[0] == "sends.t"
    small = verified_send_command(CLUSTER, sent[1], sent[2])
    assert isinstance(small, bytes) and orjson.loads(small)["send_id"] == "small"


def test_the_limit_is_the_configured_one() -> None:
    [(topic, _, _, _, _)] = apply_sends(receipt("s1", 200), limit=20_000)
    assert topic == "dlq"
    [(topic, _, _, _, _)] = apply_sends(receipt("s1", 200), limit=900_000)
    assert topic == "sends.t"


def test_workflow_health_counts_it_as_a_render_failure_of_its_own() -> None:
    [(_, _, value, _, _)] = apply_sends(receipt("huge", 21_000))
    reason = orjson.loads(value)["error"]["reason"]
    assert render_failure(TemplateError("order_receipt", None, reason)) == ("too_large", "")
