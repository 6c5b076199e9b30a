"""Who may see the dashboard and the API: the holder of the admin token.

The token comes from the environment. It is accepted as a bearer header, or once on a
login form, which then sets a signed, HTTP-only, secure session cookie. Forms carry a
signed CSRF value that must match a cookie (double submit), so another site cannot post
them. All comparisons take constant time.

A session cookie holds a random session id, signed with its time of issue. Logging out
revokes that id: the revocation goes to a topic every worker reads whole
(``mailstream.web.sessions``), so every worker refuses the cookie from then on, and after a
restart too (see ``Revocations``). Failed logins are limited per client address and
overall (``LoginLimiter``).
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from mailstream.delivery.pacing import TokenBucket

SESSION_COOKIE = "mailstream_session"
CSRF_COOKIE = "mailstream_csrf"
SESSION_SECONDS = 12 * 3600

# Sent with every dashboard page: no scripts at all, styles only inline (the pages'
# own), forms only to this origin, never inside a frame, no referrer to other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Session:
    """A valid session cookie's id, and when the session ends anyway (epoch ms)."""

    id: str
    expires_ms: int


class Revocations:
    """The ids of sessions logged out before they expired, until they would have.

    ``complete`` is False while the worker has not yet read every revocation (it is
    reading the topic at start): until then no session cookie is accepted.
    """

    def __init__(self, complete: bool = True) -> None:
        self.complete = complete
        self._until: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._until

    def add(self, session_id: str, until_ms: int) -> None:
        self._until[session_id] = max(until_ms, self._until.get(session_id, 0))

    def forget_expired(self, now_ms: int) -> int:
        """Drop the ids of sessions that have expired by now; how many were dropped."""
        gone = [sid for sid, until in self._until.items() if until <= now_ms]
        for sid in gone:
            del self._until[sid]
        return len(gone)


def _text(value: Any) -> str | None:
    """A form or cookie value as text; anything else (a file upload, None) as None."""
    return value if isinstance(value, str) else None


def bearer_value(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None: not one)."""
    scheme, _, value = (authorization or "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def bearer_matches(authorization: str | None, token: str) -> bool:
    """An ``Authorization: Bearer <token>`` header with exactly ``token`` (constant time)."""
    value = bearer_value(authorization)
    return bool(token and value) and hmac.compare_digest((value or "").encode(), token.encode())


class AdminAuth:
    def __init__(self, token: str, revocations: Revocations | None = None) -> None:
        if len(token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        self._token = token.encode()
        self._sessions = TimestampSigner(token, salt="mailstream.session")
        self._csrf = TimestampSigner(token, salt="mailstream.csrf")
        self.revocations = revocations if revocations is not None else Revocations()

    def __repr__(self) -> str:
        return "AdminAuth(<token>)"

    def token_matches(self, candidate: Any) -> bool:
        text = _text(candidate)
        if not text:
            return False
        return hmac.compare_digest(text.encode(), self._token)

    def bearer_header(self) -> str:
        """What a worker sends when it asks another worker on the operator's behalf."""
        return "Bearer " + self._token.decode()

    def bearer_ok(self, authorization: str | None) -> bool:
        """An ``Authorization: Bearer <token>`` header with the admin token."""
        return bearer_matches(authorization, self._token.decode())

    def new_session(self) -> str:
        """A new session cookie: a random id, signed with the time."""
        return self._sessions.sign(secrets.token_urlsafe(16)).decode()

    def session(self, cookie: Any, max_age: int = SESSION_SECONDS) -> Session | None:
        """The session a cookie holds, if its signature is good and it has not expired
        (revoked or not)."""
        text = _text(cookie)
        if not text:
            return None
        try:
            value, issued = self._sessions.unsign(text, max_age=max_age, return_timestamp=True)
        except (BadSignature, SignatureExpired):
            return None
        return Session(value.decode(), int(issued.timestamp() * 1000) + max_age * 1000)

    def session_ok(self, cookie: Any, max_age: int = SESSION_SECONDS) -> bool:
        """A valid session that has not been logged out (and the worker knows every
        logout so far)."""
        found = self.session(cookie, max_age)
        return found is not None and self.revocations.complete and found.id not in self.revocations

    def new_csrf(self) -> str:
        """A value for both the CSRF cookie and the form's hidden field."""
        return self._csrf.sign(secrets.token_urlsafe(16)).decode()

    def csrf_ok(self, cookie: Any, form_value: Any) -> bool:
        cookie, form_value = _text(cookie), _text(form_value)
        if not cookie or not form_value:
            return False
        # as bytes: compare_digest refuses str holding anything but ASCII
        if not hmac.compare_digest(cookie.encode(), form_value.encode()):
            return False
        try:
            self._csrf.unsign(form_value, max_age=SESSION_SECONDS)
        except (BadSignature, SignatureExpired):
            return False
        return True


class LoginLimiter:
    """How many login attempts a worker takes: ``per_client`` a minute from one client
    address and ``overall`` a minute from all of them, each as a token bucket holding a
    minute's worth. Every attempt takes a token before the token is compared (so a
    burst of parallel guesses cannot pass the check together); a successful login gives
    its tokens back. Pure: the caller passes the time in seconds. At most
    ``max_clients`` addresses are remembered, the least recently seen dropped first.
    """

    def __init__(self, per_client: int, overall: int, max_clients: int = 10_000) -> None:
        self.per_client = per_client
        self.max_clients = max_clients
        self._overall = TokenBucket(overall / 60.0, float(overall))
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, client: str) -> TokenBucket:
        bucket = self._clients.pop(client, None)
        if bucket is None:
            bucket = TokenBucket(self.per_client / 60.0, float(self.per_client))
        self._clients[client] = bucket  # most recently seen last
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        return bucket

    def attempt(self, client: str, now: float) -> int:
        """Take an attempt for ``client``: 0 if it may go ahead, else the whole seconds
        to wait (for the ``Retry-After`` header)."""
        mine = self._bucket(client)
        wait = mine.take(now)
        if wait:
            return max(1, math.ceil(wait))
        wait = self._overall.take(now)
        if wait:
            mine.refund()
            return max(1, math.ceil(wait))
        return 0

    def succeeded(self, client: str) -> None:
        """The attempt was the right token: it does not count against anyone."""
        self._overall.refund()
        bucket = self._clients.get(client)
        if bucket is not None:
            bucket.refund()


def mask_email(address: str) -> str:
    """``ada@example.com`` as ``a**@example.com``: enough to recognise, not to harvest."""
    local, at, domain = address.partition("@")
    if not at:
        return "***"
    return (local[:1] + "*" * max(2, len(local) - 1)) + "@" + domain
