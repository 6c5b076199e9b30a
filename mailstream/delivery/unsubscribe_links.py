"""Signed one-click unsubscribe tokens and the List-Unsubscribe headers that carry them.

A token names the tenant, user, category and send it was made for, signed with HMAC
(itsdangerous) under a secret from the environment: a forged or altered token does not
verify, and the secret never leaves the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeSerializer

_SALT = "mailstream.unsubscribe"


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    tenant_id: str
    user_id: str
    category: str
    send_id: str


class UnsubscribeTokens:
    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the unsubscribe secret must be at least 16 characters")
        self._serializer = URLSafeSerializer(secret, salt=_SALT)

    def __repr__(self) -> str:
        return "UnsubscribeTokens(<secret>)"

    def make(self, request: Unsubscribe) -> str:
        fields = [request.tenant_id, request.user_id, request.category, request.send_id]
        return str(self._serializer.dumps(fields))

    def verify(self, token: str) -> Unsubscribe | None:
        """The request a token was made for, or None when it is forged or altered."""
        try:
            fields = self._serializer.loads(token)
        except BadSignature:
            return None
        if not (isinstance(fields, list) and len(fields) == 4):
            return None
        if not all(isinstance(f, str) for f in fields):
            return None
        return Unsubscribe(*fields)


def list_unsubscribe_headers(
    token: str, base_url: str, mailto: str | None = None
) -> dict[str, str]:
    """RFC 8058 one-click: an https URL (POSTed to by the mailbox provider) and, when
    configured, a mailto fallback."""
    targets = [f"<{base_url.rstrip('/')}/unsubscribe/{token}>"]
    if mailto:
        targets.append(f"<mailto:{mailto}?subject={quote('unsubscribe ' + token)}>")
    return {
        "List-Unsubscribe": ", ".join(targets),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
