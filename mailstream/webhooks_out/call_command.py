"""Webhook commands: what a webhook step hands to the webhook agent, on the webhooks
topic keyed by user id, and how the agent reads one back."""

from __future__ import annotations

from typing import Any

import orjson

from mailstream.core.cluster_trust import WEBHOOK_COMMAND, ClusterKey
from mailstream.core.user_state import UserState
from mailstream.delivery.command_decoding import decode_object
from mailstream.webhooks_out.json_body import MAX_BODY_BYTES
from mailstream.webhooks_out.step import WebhookIntent

REQUIRED = ("webhook_id", "tenant_id", "user_id", "endpoint", "workflow", "enrollment_id")


def webhook_command(
    user: UserState, intent: WebhookIntent, body: dict[str, Any], now: int
) -> dict[str, Any]:
    """Self-contained: the agent needs nothing but this and the endpoint's settings, and
    every call is auditable on its topic. Signed when sent, not here: the signature
    carries the time of each attempt."""
    action = intent.action
    return {
        "webhook_id": intent.webhook_id,
        "tenant_id": user.tenant_id,
        "user_id": user.user_id,
        "endpoint": action.endpoint,
        "workflow": intent.workflow,
        "enrollment_id": intent.enrollment_id,
        "step": intent.step,
        "body": body,
        "store": {"from": action.store_from, "as": action.store_as}
        if action.store_from and action.store_as
        else None,
        "created_at": now,
    }


def encode_command(cluster: ClusterKey, command: dict[str, Any]) -> tuple[bytes, bytes]:
    """The Kafka key (the user id) and the command, signed with the cluster secret: the
    webhook agent calls no endpoint for a command it did not get from a worker."""
    key = str(command["user_id"]).encode()
    return key, cluster.seal(WEBHOOK_COMMAND, key, orjson.dumps(command))


def verified_command(cluster: ClusterKey, key: bytes | None, value: bytes | None) -> bytes | str:
    """The command a worker of this deployment signed for ``key``, or why it is not one."""
    return cluster.unseal(WEBHOOK_COMMAND, key, value)


def decode_command(value: bytes | None) -> dict[str, Any] | str:
    """The command, or why it is not one (for the dead-letter topic)."""
    command = decode_object(value, REQUIRED, non_empty=True)
    if isinstance(command, str):
        return command
    if not isinstance(command.get("body"), dict):
        return "body: missing or not a JSON object"
    size = len(orjson.dumps(command["body"]))
    if size > MAX_BODY_BYTES:
        return f"body: {size} bytes, over the {MAX_BODY_BYTES}-byte limit of a webhook body"
    if not isinstance(command.get("created_at"), int) or isinstance(command["created_at"], bool):
        return "created_at: missing or not an integer (epoch ms)"
    store = command.get("store")
    if store is not None and not (
        isinstance(store, dict)
        and isinstance(store.get("from"), str)
        and isinstance(store.get("as"), str)
        and store["from"]
        and store["as"]
    ):
        return "store: not null nor an object with the strings 'from' and 'as'"
    return command


def pick(answer: Any, path: str) -> tuple[bool, Any]:
    """The value at a dotted path of a JSON answer: (found, value)."""
    node = answer
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node
