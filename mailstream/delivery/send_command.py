"""Send commands: the rendered, self-contained message a send step hands to delivery."""

from __future__ import annotations

from typing import Any

import orjson

from mailstream.core.cluster_trust import SEND_COMMAND, ClusterKey
from mailstream.core.events import valid_tenant
from mailstream.core.user_state import UserState
from mailstream.delivery.command_decoding import decode_object
from mailstream.workflows.engine import SendIntent, user_scope
from mailstream.workflows.templates import Rendered


def recipient(user: UserState) -> str | None:
    email = user.traits.get("email")
    return email if isinstance(email, str) and email else None


def send_command(
    user: UserState, intent: SendIntent, rendered: Rendered, now: int
) -> dict[str, Any]:
    """Everything delivery needs, so it keeps no state but its own and every email is
    auditable on its topic."""
    to = recipient(user)
    assert to is not None, "checked by the caller"
    return {
        "send_id": intent.send_id,
        "tenant_id": user.tenant_id,
        "user_id": user.user_id,
        "to": to,
        "category": intent.category,
        "priority": intent.priority,
        "workflow": intent.workflow,
        "enrollment_id": intent.enrollment_id,
        "step": intent.step,
        "template": rendered.template,
        "template_version": rendered.version,
        "locale": rendered.locale,
        "subject": rendered.subject,
        "text": rendered.text,
        "html": rendered.html,
        "headers": {
            "X-Mailstream-Send-Id": intent.send_id,
            "X-Mailstream-User-Id": user.user_id,
        },
        "created_at": now,
        "event_at": intent.event_at,
    }


def encode_send_command(cluster: ClusterKey, command: dict[str, Any]) -> tuple[bytes, bytes]:
    """The Kafka key (the user id: sends are co-partitioned with users) and the command,
    signed: the delivery agent obeys no other."""
    key = str(command["user_id"]).encode()
    return key, cluster.seal(SEND_COMMAND, key, orjson.dumps(command))


def verified_send_command(
    cluster: ClusterKey, key: bytes | None, value: bytes | None
) -> bytes | str:
    """The command a worker of this deployment signed, or why it is not one."""
    return cluster.unseal(SEND_COMMAND, key, value)


REQUIRED = ("send_id", "tenant_id", "user_id", "to", "category", "subject", "text", "html")
PRIORITIES = ("high", "normal", "low")


def decode_send_command(value: bytes | None) -> dict[str, Any] | str:
    """The send command in a verified ``value``, or why it is not one (for the
    dead-letter topic)."""
    command = decode_object(value, REQUIRED)
    if isinstance(command, str):
        return command
    if command["category"] not in ("transactional", "marketing"):
        return f"unknown category {command['category']!r}"
    if command.get("priority", "normal") not in PRIORITIES:
        return f"priority must be one of {', '.join(PRIORITIES)}"
    if not valid_tenant(command["tenant_id"]):
        return "tenant_id must be 1 to 64 letters, digits or _ . -"
    return command


def template_user(user: UserState) -> dict[str, Any]:
    """What templates see as ``user``: what conditions see, plus the user id."""
    view = user_scope(user)
    view.setdefault("user_id", user.user_id)
    return view
