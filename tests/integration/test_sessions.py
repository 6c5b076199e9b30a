"""The dashboard's sessions on real workers: a logout is honoured by every worker and
survives a restart; login attempts are limited; a hostile CSRF value is refused; plain
http gets a non-Secure cookie only when configured, and otherwise a clear message; every
page carries the security headers; a client that sends headers slowly is cut off."""

from __future__ import annotations

import asyncio
import time
from http.cookies import SimpleCookie
from typing import Any

import aiohttp

from tests.integration.harness import ADMIN_TOKEN, Deployment, Worker, wait_for

HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options")


class Browser:
    """Just enough of a browser: keeps the cookies each worker sets (Secure or not, as a
    browser does on localhost) and sends them back."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    async def request(
        self, method: str, url: str, data: dict[str, str] | None = None, **headers: str
    ) -> tuple[int, str, Any]:
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
            session.request(
                method,
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp,
        ):
            for raw in resp.headers.getall("Set-Cookie", []):
                self.set_cookie_headers.append(raw)
                for name, morsel in SimpleCookie(raw).items():
                    if morsel["max-age"] == "0":
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            return resp.status, await resp.text(), resp.headers

    async def log_in(self, worker: Worker, token: str = ADMIN_TOKEN) -> int:
        await self.request("GET", worker.url + "/login")
        form = {"csrf": self.cookies["mailstream_csrf"], "token": token}
        status, _, _ = await self.request("POST", worker.url + "/login", form)
        return status


async def test_a_logout_is_honoured_by_every_worker_and_after_a_restart(
    deployment: Deployment,
) -> None:
    a, b = deployment.worker("a").start(), deployment.worker("b").start()
    await deployment.wait_ready([a, b])
    browser = Browser()
    assert await browser.log_in(a) == 303
    session = browser.cookies["mailstream_session"]

    async def dashboard(worker: Worker, cookie: str) -> int:
        status, _, _ = await Browser.request(
            _with(cookie), "GET", worker.url + "/users?user_id=nobody"
        )
        return status

    # the same cookie opens both workers (once each has read the logged-out sessions)
    for w in (a, b):
        await wait_for(lambda w=w: _is(dashboard(w, session), 303), 20, f"the session on {w.name}")

    status, _, _ = await browser.request(
        "POST", a.url + "/logout", {"csrf": browser.cookies["mailstream_csrf"]}
    )
    assert status == 303 and "mailstream_session" not in browser.cookies

    assert await dashboard(a, session) == 401  # at once where it logged out
    await wait_for(lambda: _is(dashboard(b, session), 401), 5, "the other worker to refuse it")

    b.stop()
    b.start()
    await deployment.wait_ready([a, b])
    fresh = Browser()
    assert await fresh.log_in(b) == 303
    await wait_for(
        lambda: _is(dashboard(b, fresh.cookies["mailstream_session"]), 303),
        20,
        "a new session on the restarted worker",
    )
    assert await dashboard(b, session) == 401  # the old one stays logged out


def _with(cookie: str) -> Browser:
    browser = Browser()
    browser.cookies["mailstream_session"] = cookie
    return browser


async def _is(status: Any, want: int) -> bool:
    return bool(await status == want)


async def test_login_limits_a_secure_cookie_over_plain_http_and_page_headers(
    deployment: Deployment,
) -> None:
    deployment.overrides["web"] = {"login_attempts_per_client": 5}
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    browser = Browser()

    # every page carries the security headers
    for path in ("/login", "/", "/users/x"):
        _, _, headers = await browser.request("GET", worker.url + path)
        assert all(h in headers for h in HEADERS), path
        assert headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert all("Secure" in c for c in browser.set_cookie_headers)

    # a non-ASCII CSRF value is refused, not a server error
    hostile = Browser()
    hostile.cookies["mailstream_csrf"] = "%C3%A9"
    status, _, _ = await hostile.request(
        "POST", worker.url + "/login", {"csrf": "é", "token": ADMIN_TOKEN}
    )
    assert status == 403

    # a browser that did not keep the Secure cookie (plain http) is told why
    status, page, _ = await Browser().request(
        "POST", worker.url + "/login", {"csrf": "x", "token": ADMIN_TOKEN}
    )
    assert status == 403 and "https" in page and "web.cookie_secure: false" in page
    _, page, _ = await Browser().request("GET", worker.url + "/login", Host="mail.example:6066")
    assert "web.cookie_secure: false" in page
    _, page, _ = await Browser().request("GET", worker.url + "/login")
    assert "web.cookie_secure" not in page  # localhost keeps Secure cookies

    # from one address, 5 attempts a minute (two were the posts above); then 429 with
    # Retry-After, even with the right token
    guesser = Browser()
    await guesser.request("GET", worker.url + "/login")
    statuses = []
    for guess in range(3):
        csrf = guesser.cookies["mailstream_csrf"]  # each form answered comes with a new one
        status, _, _ = await guesser.request(
            "POST", worker.url + "/login", {"csrf": csrf, "token": f"guess-{guess:020d}"}
        )
        statuses.append(status)
    assert statuses == [401, 401, 401]
    status, page, headers = await guesser.request(
        "POST",
        worker.url + "/login",
        {"csrf": guesser.cookies["mailstream_csrf"], "token": ADMIN_TOKEN},
    )
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert "Too many login attempts" in page


async def test_plain_http_with_cookie_secure_false_and_a_slow_client_is_cut_off(
    deployment: Deployment,
) -> None:
    deployment.overrides["web"] = {"cookie_secure": False, "header_timeout": "2s"}
    worker = deployment.worker("a").start()
    await deployment.wait_ready([worker])
    browser = Browser()

    assert await browser.log_in(worker) == 303
    assert browser.set_cookie_headers
    assert not any("Secure" in c for c in browser.set_cookie_headers)

    # a Content-Type the header parser chokes on is refused, not a server error
    bad = {"Content-Type": ";0*"}
    for path in ("/login", "/logout"):
        status, _, _ = await browser.request("POST", worker.url + path, None, **bad)
        assert status == 403, path

    # slowloris: headers that never end are cut off after header_timeout
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.web_port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await writer.drain()
    started = time.monotonic()
    try:
        for _ in range(10):
            await asyncio.sleep(0.5)
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            if reader.at_eof():
                break
        closed = await asyncio.wait_for(reader.read(), timeout=3)
    except (ConnectionError, TimeoutError) as exc:
        closed = repr(exc).encode()
    finally:
        writer.close()
    took = time.monotonic() - started
    assert took < 5.5, f"the connection stayed open {took:.1f} s: {closed!r}"
