"""A local receiver of mailstream's webhook step, for tests: checks every signature the
way the docs tell receivers to, answers as scripted, and records every request.

    async with WebhookReceiver({"crm": "crm-secret-0123456789"}) as hooks:
        hooks.script("crm", [500, 500])   # then the default: 200 with {"crm_id": ...}
        url = hooks.url("crm")            # http://127.0.0.1:PORT/hooks/crm
        ...
        hooks.successes("crm")           # Counter of webhook ids answered 2xx

A request whose signature does not verify gets 401 and is recorded with
``signature_ok=False``. Binds 127.0.0.1 only; serves from the loop that started it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

TOLERANCE = 300


def check_signature(secret: bytes, header: str, body: bytes, now: float) -> bool:
    """The receiver's check, written apart from mailstream's own code on purpose."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > TOLERANCE:
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True, slots=True)
class Request:
    name: str
    webhook_id: str
    attempt: int
    signature_ok: bool
    status: int  # what the receiver answered
    body: Any
    monotonic: float


class WebhookReceiver:
    def __init__(self, secrets: Mapping[str, str], host: str = "127.0.0.1") -> None:
        self.secrets = {k: v.encode() for k, v in secrets.items()}
        self.host = host
        self.port = 0
        self.requests: list[Request] = []
        self._scripts: dict[str, deque[int]] = defaultdict(deque)
        self._always: dict[str, int] = {}
        self._runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/hooks/{name}"

    def script(self, name: str, statuses: Iterable[int]) -> None:
        """Answer the next requests to ``name`` with these statuses, one each."""
        self._scripts[name].extend(statuses)

    def always(self, name: str, status: int) -> None:
        self._always[name] = status

    def to(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.name == name]

    def successes(self, name: str) -> Counter[str]:
        return Counter(r.webhook_id for r in self.to(name) if 200 <= r.status < 300)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        secret = self.secrets.get(name)
        ok = secret is not None and check_signature(
            secret, request.headers.get("X-Mailstream-Signature", ""), body, time.time()
        )
        webhook_id = request.headers.get("X-Mailstream-Webhook-Id", "")
        if not ok:
            status = 401
        elif self._scripts[name]:
            status = self._scripts[name].popleft()
        else:
            status = self._always.get(name, 200)
        self.requests.append(
            Request(
                name,
                webhook_id,
                int(request.headers.get("X-Mailstream-Attempt", "0")),
                ok,
                status,
                orjson.loads(body) if body else None,
                time.monotonic(),
            )
        )
        if 200 <= status < 300:
            return web.json_response({"crm_id": f"crm-{webhook_id[:8]}", "ok": True})
        return web.Response(status=status, text="scripted failure")
