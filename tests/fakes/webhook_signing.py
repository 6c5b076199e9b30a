"""Sign webhook requests the way SendGrid, Mailgun and Postmark do, for tests.

Integration tests use these to post valid webhooks to a running worker::

    private_key, public_key = sendgrid_keypair()
    env = {"SENDGRID_WEBHOOK_PUBLIC_KEY": public_key, ...}  # the worker's environment
    body = json.dumps([{"event": "bounce", ...}]).encode()
    await session.post(url, data=body, headers=sendgrid_sign(private_key, body, time.time()))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

JSON = "application/json"


def sendgrid_keypair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh P-256 key pair: the private key, and the public key as SendGrid shows it
    (base64 of the DER SubjectPublicKeyInfo), ready for public_key_env."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, base64.b64encode(der).decode()


def sendgrid_sign(
    private_key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: float | str
) -> dict[str, str]:
    """The headers of a Signed Event Webhook POST of ``body`` at ``timestamp`` (epoch s):
    a base64 DER ECDSA signature over the timestamp followed by the raw body."""
    stamp = timestamp if isinstance(timestamp, str) else str(int(timestamp))
    signature = private_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": JSON,
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def mailgun_signature(signing_key: str, timestamp: float | str, token: str) -> dict[str, str]:
    """Mailgun's signature block: hex HMAC-SHA256 of timestamp + token."""
    stamp = timestamp if isinstance(timestamp, str) else str(int(timestamp))
    digest = hmac.new(signing_key.encode(), (stamp + token).encode(), hashlib.sha256)
    return {"timestamp": stamp, "token": token, "signature": digest.hexdigest()}


def mailgun_signed_body(
    signing_key: str, event_data: Mapping[str, Any], timestamp: float | str, token: str
) -> bytes:
    """The JSON body of a Mailgun webhook POST (send it as application/json)."""
    signature = mailgun_signature(signing_key, timestamp, token)
    return json.dumps({"signature": signature, "event-data": dict(event_data)}).encode()


def postmark_auth(user: str, password: str) -> dict[str, str]:
    """The headers Postmark sends for a webhook URL with basic auth credentials."""
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Content-Type": JSON, "Authorization": f"Basic {credentials}"}
