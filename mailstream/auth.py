"""Who may see the dashboard and the API: the holder of the admin token.

The token comes from the environment. It is accepted as a bearer header, or once on a
login form, which then sets a signed, HTTP-only, secure session cookie. Forms carry a
signed CSRF value that must match a cookie (double submit), so another site cannot post
them. All comparisons take constant time.
"""

from __future__ import annotations

import hmac
import secrets

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

SESSION_COOKIE = "mailstream_session"
CSRF_COOKIE = "mailstream_csrf"
SESSION_SECONDS = 12 * 3600


def bearer_matches(authorization: str | None, token: str) -> bool:
    """An ``Authorization: Bearer <token>`` header with exactly ``token`` (constant time)."""
    scheme, _, value = (authorization or "").partition(" ")
    value = value.strip()
    return (
        bool(token and value)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(value.encode(), token.encode())
    )


class AdminAuth:
    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        self._token = token.encode()
        self._sessions = TimestampSigner(token, salt="mailstream.session")
        self._csrf = TimestampSigner(token, salt="mailstream.csrf")

    def __repr__(self) -> str:
        return "AdminAuth(<token>)"

    def token_matches(self, candidate: str | None) -> bool:
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self._token)

    def bearer_header(self) -> str:
        """What a worker sends when it asks another worker on the operator's behalf."""
        return "Bearer " + self._token.decode()

    def bearer_ok(self, authorization: str | None) -> bool:
        """An ``Authorization: Bearer <token>`` header with the admin token."""
        return bearer_matches(authorization, self._token.decode())

    def new_session(self) -> str:
        return self._sessions.sign(secrets.token_urlsafe(16)).decode()

    def session_ok(self, cookie: str | None, max_age: int = SESSION_SECONDS) -> bool:
        if not cookie:
            return False
        try:
            self._sessions.unsign(cookie, max_age=max_age)
        except (BadSignature, SignatureExpired):
            return False
        return True

    def new_csrf(self) -> str:
        """A value for both the CSRF cookie and the form's hidden field."""
        return self._csrf.sign(secrets.token_urlsafe(16)).decode()

    def csrf_ok(self, cookie: str | None, form_value: str | None) -> bool:
        if not cookie or not form_value or not hmac.compare_digest(cookie, form_value):
            return False
        try:
            self._csrf.unsign(form_value, max_age=SESSION_SECONDS)
        except (BadSignature, SignatureExpired):
            return False
        return True


def mask_email(address: str) -> str:
    """``ada@example.com`` as ``a**@example.com``: enough to recognise, not to harvest."""
    local, at, domain = address.partition("@")
    if not at:
        return "***"
    return (local[:1] + "*" * max(2, len(local) - 1)) + "@" + domain
