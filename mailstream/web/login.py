"""The dashboard's login form, logout and session cookies, and the headers every
dashboard page carries (see mailstream.web.admin_auth for sessions, mailstream.web.sessions
for how a logout reaches every worker)."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from faust.web import Request, Response, View

from mailstream.kafka.access import kafka_access
from mailstream.web.admin_auth import (
    CSRF_COOKIE,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    LoginLimiter,
)
from mailstream.web.pages import render_page
from mailstream.web.request_body import read_form
from mailstream.web.routes import Views
from mailstream.web.sessions import SessionFeed

logger = logging.getLogger(__name__)


def secured(response: Response) -> Response:
    """``response`` with the headers every dashboard page carries (SECURITY_HEADERS)."""
    cast(Any, response).headers.update(SECURITY_HEADERS)
    return response


# Why a login form comes back without its cookie when the cookie is Secure and the page
# is not on https (browsers keep such cookies only over https, and on localhost).
NEEDS_HTTPS = (
    "This dashboard is served over plain http, and its login cookie is marked Secure, so"
    " your browser may not keep it: open the dashboard over https, or set"
    " web.cookie_secure: false in the worker's config (only on a network you trust)."
)


def plain_http(request: Any) -> bool:
    """Whether the browser reached this page over plain http, to a name other than
    localhost (a proxy that terminates TLS says https in X-Forwarded-Proto)."""
    forwarded = (request.headers.get("X-Forwarded-Proto") or "").split(",")[0].strip().lower()
    scheme = forwarded or request.scheme
    host = (request.host or "").rsplit(":", 1)[0].strip("[]").lower()
    local = host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")
    return scheme == "http" and not local


def redirect(web: View, location: str) -> Response:
    return secured(web.html("", status=303, headers={"Location": location}))


class Sessions:
    """Logging in and out of the dashboard: the login form, the session cookies, and the
    feed that takes a logout to every worker."""

    def __init__(self, views: Views) -> None:
        rt = views.rt
        self.rt = rt
        self.auth = views.auth
        web = rt.config.web
        self.cookie_secure = web.cookie_secure
        self.limiter = LoginLimiter(web.login_attempts_per_client, web.login_attempts_overall)
        self.feed = SessionFeed(
            kafka_access(rt.config),
            rt.config.topics.sessions,
            self.auth.revocations,
            self._publish_revocation,
        )

    async def _publish_revocation(self, key: bytes, value: bytes) -> None:
        await self.rt.app.producer.send_and_wait(
            self.rt.config.topics.sessions, key, value, partition=None, timestamp=None, headers=None
        )

    async def follow(self) -> None:
        """Keep this worker's list of logged-out sessions current (mailstream.web.sessions)."""
        await self.feed.run()

    def login_page(
        self, web: View, status: int, message: str = "", request: Any = None
    ) -> Response:
        csrf = self.auth.new_csrf()
        note = ""
        if request is not None and self.cookie_secure and plain_http(request):
            note = NEEDS_HTTPS
        html = render_page("login.html", csrf=csrf, message=message, note=note)
        response = web.html(html, status=status)
        self.set_cookie(response, CSRF_COOKIE, csrf, SESSION_SECONDS)
        return secured(response)

    def set_cookie(self, response: Any, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            secure=self.cookie_secure,
            samesite="Strict",
            path="/",
        )


def register(views: Views) -> Sessions:
    """The login and logout pages on the views' app, and the sessions they keep."""
    sessions = Sessions(views)
    auth, limiter, cookie_secure = sessions.auth, sessions.limiter, sessions.cookie_secure
    login_page, set_cookie = sessions.login_page, sessions.set_cookie

    class Login(View):
        async def get(self, request: Request) -> Response:
            return login_page(self, 200, request=request)

        async def post(self, request: Request) -> Response:
            http: Any = request
            form = await read_form(http) or {}  # a Content-Type that does not parse: no form
            client = http.remote or "unknown"
            wait = limiter.attempt(client, time.monotonic())
            if wait:
                response = login_page(
                    self, 429, f"Too many login attempts; try again in {wait} s.", request
                )
                cast(Any, response).headers["Retry-After"] = str(wait)
                return response
            cookie = http.cookies.get(CSRF_COOKIE)
            if cookie is None:
                # the browser did not send back the cookie set with the form
                message = NEEDS_HTTPS if cookie_secure else "The form expired; try again."
                return login_page(self, 403, message, request)
            if not auth.csrf_ok(cookie, form.get("csrf")):
                return login_page(self, 403, "The form expired; try again.", request)
            if not auth.token_matches(form.get("token")):
                return login_page(self, 401, "That token is not right.", request)
            limiter.succeeded(client)
            response = redirect(self, "/")
            set_cookie(response, SESSION_COOKIE, auth.new_session(), SESSION_SECONDS)
            return response

    class Logout(View):
        async def post(self, request: Request) -> Response:
            http: Any = request
            form = await read_form(http) or {}  # a Content-Type that does not parse: no form
            if not auth.csrf_ok(http.cookies.get(CSRF_COOKIE), form.get("csrf")):
                return secured(self.html("", status=403))
            session = auth.session(http.cookies.get(SESSION_COOKIE))
            response = redirect(self, "/login")
            if session is not None:
                try:
                    await sessions.feed.revoke(session)
                except Exception as exc:
                    logger.warning("could not record a logout: %r", exc)
                    response = secured(
                        self.html(
                            "<p>The logout could not be recorded (the broker did not answer):"
                            " your session is still valid elsewhere. Try again.</p>",
                            status=503,
                        )
                    )
            set_cookie(response, SESSION_COOKIE, "", 0)
            return response

    app = views.rt.app
    app.page("/login")(Login)
    app.page("/logout")(Logout)
    app.task(sessions.follow)
    return sessions
