"""Commands as a worker of the test deployment writes them: signed with its cluster secret."""

from __future__ import annotations

from typing import Any

from mailstream.core.cluster_trust import ClusterKey
from mailstream.delivery.send_command import encode_send_command
from mailstream.webhooks_out.call_command import encode_command
from tests.integration.harness import CLUSTER_SECRET

cluster = ClusterKey(CLUSTER_SECRET)


def send_document(
    send_id: str, user: str, category: str = "transactional", **extra: Any
) -> dict[str, Any]:
    """A send command's fields, as a worker would write them for ``user``."""
    return {
        "send_id": send_id,
        "tenant_id": "default",
        "user_id": user,
        "to": f"{user}@example.com",
        "category": category,
        "priority": "normal",
        "workflow": "test",
        "subject": f"Hello {user}",
        "text": "Hello",
        "html": "<p>Hello</p>",
        "headers": {"X-Mailstream-Send-Id": send_id, "X-Mailstream-User-Id": user},
        **extra,
    }


def send_command(command: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of a send command the deployment's workers obey."""
    return encode_send_command(cluster, command)


def webhook_command(command: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of a webhook command the deployment's workers obey."""
    return encode_command(cluster, command)
