"""The signature on every webhook request, and how a receiver checks it.

``X-Mailstream-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, keyed
with the endpoint's secret; ``X-Mailstream-Webhook-Id`` names the call (the same on
every retry), so a receiver can drop repeats. Pure: the caller passes the time.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Mailstream-Signature"
ID_HEADER = "X-Mailstream-Webhook-Id"
ATTEMPT_HEADER = "X-Mailstream-Attempt"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300  # seconds a receiver should accept a timestamp off its clock


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},{SCHEME}={sign(secret, timestamp, body)}"


def request_headers(
    secret: bytes, webhook_id: str, attempt: int, timestamp: int, body: bytes
) -> dict[str, str]:
    """Every header a webhook request carries, the signature made over exactly ``body``."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "mailstream-webhook/1",
        ID_HEADER: webhook_id,
        ATTEMPT_HEADER: str(attempt),
        SIGNATURE_HEADER: signature_header(secret, timestamp, body),
    }


def verify(
    secret: bytes, header: str | None, body: bytes, now: float, tolerance: float = DEFAULT_TOLERANCE
) -> bool:
    """What a receiver does: the header parses, its time is within ``tolerance`` of
    ``now``, and one of its ``v1`` signatures matches (compared in constant time)."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == SCHEME:
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)
