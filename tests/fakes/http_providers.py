"""One local web app imitating the Postmark, SendGrid and Mailgun send APIs, for tests.

It binds 127.0.0.1 on a free port and serves, on the same address:

- ``POST /email`` (Postmark): ``X-Postmark-Server-Token``, a JSON message;
- ``POST /v3/mail/send`` (SendGrid): ``Authorization: Bearer KEY``, a JSON mail;
- ``POST /v3/{domain}/messages`` (Mailgun): basic auth ``api:KEY``, form fields.

So every provider's ``base_url`` is ``fake.url``. Like the real services it refuses a
wrong or missing key with the provider's 401 answer and a malformed request with the
provider's 4xx error body; it records every message it accepts. Per recipient it can be
told what to answer next::

    async with FakeProviders() as fake:
        fake.script("flaky@x.test", [("429", {"Retry-After": "1"}), ("500",), ("ok",)])
        fake.invalid("bad@x.test")  # always the provider's invalid-recipient answer
        env = fake.env()  # {"POSTMARK_SERVER_TOKEN": ..., "SENDGRID_API_KEY": ..., ...}
        ...  # point providers (or worker processes) at fake.url
        [message] = await fake.wait_for(1, to="someone@x.test")

Script steps, one consumed per request to that address (the first recipient decides):

- ``("ok",)``: accept;
- ``("invalid",)``: the provider's invalid-recipient answer;
- ``("429", {"Retry-After": "1"})``, ``("500",)``, any status 400-599: the provider's
  error answer for that status, with the extra response headers given;
- ``("sleep", 2.0)``: wait that long, then answer as if there were no step. A client
  that gave up meanwhile still finds the message recorded, as with a real provider;
- ``("disconnect",)``: close the connection without answering.

When an address has no steps left, it gets the default: accept, or the invalid-recipient
answer for addresses given to ``invalid()``. Checks happen in the real APIs' order: the
key, then the request shape, then the script. 5xx answers are plain text, like a load
balancer's, except SendGrid's JSON.

It serves from the event loop that started it: a test waits with ``await`` (e.g.
``wait_for``), never with a blocking call, or the fake cannot answer. Run it alone with
``python -m tests.fakes.http_providers [--port N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import secrets
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson
from aiohttp import BasicAuth, web
from multidict import MultiDictProxy

POSTMARK_TOKEN = "pm-fake-server-token"
SENDGRID_KEY = "SG.fake-key.local"
MAILGUN_KEY = "fake-mailgun-key"
MAILGUN_DOMAIN = "mg.example.test"

DEFAULT_ENV_NAMES = {
    "postmark": "POSTMARK_SERVER_TOKEN",
    "sendgrid": "SENDGRID_API_KEY",
    "mailgun": "MAILGUN_API_KEY",
}

SENDGRID_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"

Step = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Received:
    """One message a fake provider accepted (one per recipient)."""

    provider: str  # "postmark", "sendgrid" or "mailgun"
    to: str
    from_address: str
    subject: str
    text: str
    html: str
    headers: dict[str, str]  # the custom headers, as sent
    metadata: dict[str, str]  # Postmark Metadata, SendGrid custom_args, Mailgun v: variables
    message_id: str | None  # the Message-ID header the client set, if any
    provider_message_id: str  # what the fake answered (MessageID, X-Message-Id, id)
    tag: str | None  # Postmark Tag, SendGrid categories[0], Mailgun o:tag
    stream: str | None  # Postmark MessageStream
    monotonic: float  # time.monotonic() when the request arrived
    wall: float  # time.time() when the request arrived
    raw: Mapping[str, Any] = field(repr=False)  # the request body as parsed


@dataclass(frozen=True, slots=True)
class Attempt:
    """Any request that got past the URL: accepted, refused or dropped."""

    provider: str
    to: str | None  # the first recipient, when the request said
    status: int  # 0 when the connection was dropped
    monotonic: float
    wall: float
    client_port: int | None  # the same port again means a reused connection


class _Refusal(Exception):
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


@dataclass
class _Parsed:
    recipients: list[str]
    from_address: str
    subject: str
    text: str
    html: str
    headers: dict[str, str]
    metadata: dict[str, str]
    tag: str | None
    stream: str | None
    raw: Mapping[str, Any]
    domain: str | None = None  # Mailgun's sending domain, from the URL


def _json(data: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _text(text: str, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(text=text, status=status, headers=dict(headers or {}))


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _find_header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


class FakeProviders:
    """The three fake send APIs on one loopback port; an async context manager.

    The keys are the ones each API accepts (``env()`` gives them under the default
    variable names); ``mailgun_domains`` are the sending domains Mailgun knows (empty:
    any). ``port=0`` picks a free port; ``url`` says which.
    """

    def __init__(
        self,
        *,
        postmark_token: str = POSTMARK_TOKEN,
        sendgrid_key: str = SENDGRID_KEY,
        mailgun_key: str = MAILGUN_KEY,
        mailgun_domains: Iterable[str] = (MAILGUN_DOMAIN,),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.postmark_token = postmark_token
        self.sendgrid_key = sendgrid_key
        self.mailgun_key = mailgun_key
        self.mailgun_domains = {d.lower() for d in mailgun_domains}
        self.host = host
        self.port = port
        self.received: list[Received] = []
        self.attempts: list[Attempt] = []
        self._scripts: dict[str, deque[Step]] = defaultdict(deque)
        self._invalid: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._counter = 0

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base_url for all three providers."""
        if self._runner is None:
            raise RuntimeError("FakeProviders is not started")
        return f"http://{self.host}:{self.port}"

    def env(self, names: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment variables holding the right keys, under the default (or given) names."""
        names = {**DEFAULT_ENV_NAMES, **(names or {})}
        return {
            names["postmark"]: self.postmark_token,
            names["sendgrid"]: self.sendgrid_key,
            names["mailgun"]: self.mailgun_key,
        }

    async def start(self) -> None:
        """Listen on ``host:port``; after a stop(), again on the same port."""
        app = web.Application()
        app.router.add_post("/email", self._postmark)
        app.router.add_post("/v3/mail/send", self._sendgrid)
        app.router.add_post("/v3/{domain}/messages", self._mailgun)
        self._stopping.clear()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        # port 0 asked for a free one; keep it, so a restart (an outage) keeps the URL
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping.set()  # ends scripted sleeps at once
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeProviders:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- scripting and inspection ----------------------------------------------------

    def script(self, address: str, steps: Sequence[Step | str]) -> None:
        """Queue what to answer to the next requests for ``address`` (see the module doc)."""
        queue = self._scripts[address.lower()]
        for raw in steps:
            step: Step = (raw,) if isinstance(raw, str) else tuple(raw)
            kind = str(step[0]) if step else ""
            if kind in ("ok", "invalid", "disconnect"):
                pass
            elif kind == "sleep":
                if len(step) != 2 or not isinstance(step[1], int | float):
                    raise ValueError(f"{address}: a sleep step is ('sleep', seconds), not {step}")
            elif kind.isdigit() and 400 <= int(kind) <= 599:
                if len(step) > 2 or (len(step) == 2 and not isinstance(step[1], Mapping)):
                    raise ValueError(f"{address}: an error step is (status, {{headers}}): {step}")
            else:
                raise ValueError(
                    f"{address}: unknown step {step!r}; use ok, invalid, sleep, disconnect "
                    "or an HTTP status from 400 to 599"
                )
            queue.append(step)

    def invalid(self, address: str) -> None:
        """From now on, answer ``address`` with the provider's invalid-recipient error."""
        self._invalid.add(address.lower())

    def reset(self) -> None:
        """Forget scripts, invalid addresses and everything recorded."""
        self._scripts.clear()
        self._invalid.clear()
        self.received.clear()
        self.attempts.clear()

    def messages(self, *, provider: str | None = None, to: str | None = None) -> list[Received]:
        return [
            r
            for r in self.received
            if (provider is None or r.provider == provider)
            and (to is None or r.to.lower() == to.lower())
        ]

    async def wait_for(
        self,
        count: int,
        *,
        provider: str | None = None,
        to: str | None = None,
        timeout: float = 10.0,
    ) -> list[Received]:
        """Wait until at least ``count`` matching messages were accepted; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(provider=provider, to=to)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {count} message(s)"
                    f" (provider={provider}, to={to}); have {len(found)}"
                )
            await asyncio.sleep(0.01)

    # -- the shared request path -----------------------------------------------------

    async def _handle(self, provider: str, request: web.Request) -> web.StreamResponse:
        mono, wall = time.monotonic(), time.time()
        first: str | None = None
        response: web.StreamResponse | None
        try:
            self._check_auth(provider, request)
            parsed = await self._parse(provider, request)
            first = parsed.recipients[0]
            response = await self._answer(provider, parsed, mono, wall)
        except _Refusal as refusal:
            response = refusal.response
        peer = request.transport.get_extra_info("peername") if request.transport else None
        port = peer[1] if isinstance(peer, tuple) and len(peer) > 1 else None
        if response is None:  # a scripted disconnect
            self.attempts.append(Attempt(provider, first, 0, mono, wall, port))
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        self.attempts.append(Attempt(provider, first, response.status, mono, wall, port))
        return response

    async def _answer(
        self, provider: str, parsed: _Parsed, mono: float, wall: float
    ) -> web.StreamResponse | None:
        """The scripted (or default) answer; None to drop the connection."""
        address = parsed.recipients[0].lower()
        queue = self._scripts.get(address)
        step: Step = queue.popleft() if queue else ()
        kind = str(step[0]) if step else ""
        if kind == "sleep":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=float(step[1]))
            if self._stopping.is_set():
                return _text("Service Unavailable", 503)
            kind = ""
        if kind == "disconnect":
            return None
        if kind == "invalid" or (not kind and address in self._invalid):
            return self._invalid_answer(provider, parsed.recipients[0])
        if kind and kind != "ok":
            extra = dict(step[1]) if len(step) > 1 else {}
            return self._error(provider, int(kind), extra)
        return self._accept(provider, parsed, mono, wall)

    def _accept(self, provider: str, parsed: _Parsed, mono: float, wall: float) -> web.Response:
        message_id = _find_header(parsed.headers, "Message-ID")
        self._counter += 1
        if provider == "postmark":
            provider_id = str(uuid.uuid4())
        elif provider == "sendgrid":
            provider_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()[:22]
        else:
            domain = parsed.domain or MAILGUN_DOMAIN
            given = message_id.strip().strip("<>") if message_id else ""
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
            provider_id = f"<{given or f'{stamp}.{self._counter}.{secrets.token_hex(4)}@{domain}'}>"
        for to in parsed.recipients:
            self.received.append(
                Received(
                    provider=provider,
                    to=to,
                    from_address=parsed.from_address,
                    subject=parsed.subject,
                    text=parsed.text,
                    html=parsed.html,
                    headers=parsed.headers,
                    metadata=parsed.metadata,
                    message_id=message_id,
                    provider_message_id=provider_id,
                    tag=parsed.tag,
                    stream=parsed.stream,
                    monotonic=mono,
                    wall=wall,
                    raw=parsed.raw,
                )
            )
        if provider == "postmark":
            return _json(
                {
                    "To": ", ".join(parsed.recipients),
                    "SubmittedAt": datetime.now(UTC).isoformat(),
                    "MessageID": provider_id,
                    "ErrorCode": 0,
                    "Message": "OK",
                },
                200,
            )
        if provider == "sendgrid":
            return web.Response(status=202, headers={"X-Message-Id": provider_id})
        return _json({"id": provider_id, "message": "Queued. Thank you."}, 200)

    # -- per provider: routes, auth, shape -------------------------------------------

    async def _postmark(self, request: web.Request) -> web.StreamResponse:
        return await self._handle("postmark", request)

    async def _sendgrid(self, request: web.Request) -> web.StreamResponse:
        return await self._handle("sendgrid", request)

    async def _mailgun(self, request: web.Request) -> web.StreamResponse:
        return await self._handle("mailgun", request)

    def _check_auth(self, provider: str, request: web.Request) -> None:
        if provider == "postmark":
            token = request.headers.get("X-Postmark-Server-Token")
            if token is None:
                raise _Refusal(
                    _postmark_error(
                        401,
                        10,
                        "No Account or Server API tokens were supplied in the HTTP headers. "
                        "Please add a header for either X-Postmark-Server-Token or "
                        "X-Postmark-Account-Token.",
                    )
                )
            # "The header name and value are case insensitive" (Postmark API overview)
            if token.strip().lower() != self.postmark_token.lower():
                raise _Refusal(
                    _postmark_error(401, 10, "Request does not contain a valid Server token.")
                )
        elif provider == "sendgrid":
            header = request.headers.get("Authorization")
            if not header:
                raise _Refusal(_sendgrid_errors(401, [(None, "authorization required")]))
            if header != f"Bearer {self.sendgrid_key}":
                raise _Refusal(
                    _sendgrid_errors(
                        401,
                        [
                            (
                                None,
                                "The provided authorization grant is invalid, expired, or revoked",
                            )
                        ],
                    )
                )
        else:
            header = request.headers.get("Authorization", "")
            try:
                auth = BasicAuth.decode(header)
            except ValueError:
                auth = None
            if auth is None or auth.login != "api" or auth.password != self.mailgun_key:
                raise _Refusal(_text("Forbidden", 401))
            domain = request.match_info["domain"].lower()
            if self.mailgun_domains and domain not in self.mailgun_domains:
                raise _Refusal(_json({"message": f"Domain not found: {domain}"}, 404))

    async def _parse(self, provider: str, request: web.Request) -> _Parsed:
        if provider == "postmark":
            return _parse_postmark(await request.read(), request.content_type)
        if provider == "sendgrid":
            return _parse_sendgrid(await request.read(), request.content_type)
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise _Refusal(
                _json({"message": "Unsupported Content-Type: use multipart/form-data"}, 400)
            )
        form = await request.post()
        return _parse_mailgun(form, request.match_info["domain"].lower())

    def _invalid_answer(self, provider: str, address: str) -> web.Response:
        if provider == "postmark":
            return _postmark_error(
                422,
                406,
                "You tried to send to recipient(s) that have been marked as inactive. "
                f"Found inactive addresses: {address}. Inactive recipients are ones that have "
                "generated a hard bounce, a spam complaint, or a manual suppression.",
            )
        if provider == "sendgrid":
            return _sendgrid_errors(
                400,
                [("personalizations.0.to.0.email", "Does not contain a valid address.")],
            )
        return _json(
            {"message": "'to' parameter is not a valid address. please check documentation"}, 400
        )

    def _error(self, provider: str, status: int, extra: dict[str, str]) -> web.Response:
        reason = _REASONS.get(status, "Error")
        if provider == "sendgrid":
            headers = extra
            message = reason.lower()
            if status == 429:
                headers = {
                    "X-RateLimit-Limit": "600",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(int(time.time()) + 1),
                    **extra,
                }
            elif status >= 500:
                message = "internal error"
            return _sendgrid_errors(status, [(None, message)], headers=headers)
        if status >= 500:
            return _text(reason, status, extra)
        if provider == "postmark":
            if status == 401:
                return _postmark_error(401, 10, "Request does not contain a valid Server token.")
            if status == 422:
                return _postmark_error(422, 300, "Invalid email request", extra)
            if status == 429:
                return _postmark_error(429, 429, "Rate limit exceeded.", extra)
            return _text(reason, status, extra)
        if status == 401:
            return _text("Forbidden", 401, extra)
        return _json({"message": reason}, status, extra)


# -- error bodies ------------------------------------------------------------------------


def _postmark_error(
    status: int, code: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return _json({"ErrorCode": code, "Message": message}, status, headers)


def _sendgrid_errors(
    status: int,
    errors: Sequence[tuple[str | None, str]],
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = []
    for fld, message in errors:
        anchor = None
        if fld:
            # personalizations.0.to.0.email -> message.personalizations.to
            words = [w for w in fld.split(".") if not w.isdigit() and w != "email"]
            anchor = "message." + ".".join(words)
        body.append(
            {
                "message": message,
                "field": fld,
                "help": f"{SENDGRID_HELP}#{anchor}" if anchor else None,
            }
        )
    return _json({"errors": body}, status, headers)


# -- request shapes ----------------------------------------------------------------------


def _parse_postmark(body: bytes, content_type: str) -> _Parsed:
    def refuse(code: int, message: str) -> _Refusal:
        return _Refusal(_postmark_error(422, code, message))

    if content_type != "application/json":
        raise refuse(
            409,
            "JSON Required: Please set 'Accept' and 'Content-Type' HTTP headers to "
            "'application/json'.",
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise refuse(402, "Received invalid JSON input.") from None
    if not isinstance(data, dict):
        raise refuse(403, "Incompatible JSON: expected a message object.")
    for key in ("From", "To", "Subject", "TextBody", "HtmlBody", "ReplyTo", "Tag"):
        if key in data and not isinstance(data[key], str):
            raise refuse(403, f"Incompatible JSON: '{key}' must be a string.")
    sender = data.get("From", "")
    if "@" not in sender:
        raise refuse(300, f"Invalid 'From' address: '{sender}'.")
    recipients = [a.strip() for a in data.get("To", "").split(",") if a.strip()]
    if not recipients:
        raise refuse(300, "Zero recipients specified")
    for address in recipients:
        if "@" not in address:
            raise refuse(
                300,
                f"Error parsing 'To': Illegal email address '{address}'. "
                "It must contain the '@' symbol.",
            )
    if not data.get("TextBody") and not data.get("HtmlBody"):
        raise refuse(300, "Provide either email TextBody or HtmlBody or both.")
    raw_headers = data.get("Headers") or []
    if not isinstance(raw_headers, list) or not all(
        isinstance(h, dict) and isinstance(h.get("Name"), str) and isinstance(h.get("Value"), str)
        for h in raw_headers
    ):
        raise refuse(403, "Incompatible JSON: 'Headers' must be a list of {Name, Value}.")
    metadata = data.get("Metadata") or {}
    if not _is_str_map(metadata):
        raise refuse(403, "Incompatible JSON: 'Metadata' must map names to strings.")
    return _Parsed(
        recipients=recipients,
        from_address=sender,
        subject=data.get("Subject", ""),
        text=data.get("TextBody", ""),
        html=data.get("HtmlBody", ""),
        headers={h["Name"]: h["Value"] for h in raw_headers},
        metadata=dict(metadata),
        tag=data.get("Tag"),
        stream=data.get("MessageStream"),
        raw=data,
    )


def _parse_sendgrid(body: bytes, content_type: str) -> _Parsed:
    if content_type != "application/json":
        raise _Refusal(_sendgrid_errors(415, [(None, "Content-Type should be application/json.")]))
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Refusal(_sendgrid_errors(400, [(None, "Bad Request")])) from None
    if not isinstance(data, dict):
        raise _Refusal(_sendgrid_errors(400, [(None, "Bad Request")]))
    errors: list[tuple[str | None, str]] = []
    recipients: list[str] = []
    metadata: dict[str, str] = {}
    personalizations = data.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        errors.append(
            (
                "personalizations",
                "The personalizations field is required and must have at least one "
                "personalization.",
            )
        )
        personalizations = []
    for p, person in enumerate(personalizations):
        tos = person.get("to") if isinstance(person, dict) else None
        if not isinstance(tos, list) or not tos:
            errors.append(
                (
                    f"personalizations.{p}.to",
                    "The to array is required for all personalization objects, and must have "
                    "at least one email object with a valid email address.",
                )
            )
            continue
        for t, to in enumerate(tos):
            email = to.get("email") if isinstance(to, dict) else None
            where = f"personalizations.{p}.to.{t}.email"
            if not isinstance(email, str) or not email:
                errors.append((where, "The to email parameter is required."))
            elif "@" not in email or " " in email.strip():
                errors.append((where, "Does not contain a valid address."))
            else:
                recipients.append(email)
        args = person.get("custom_args", {})
        if not _is_str_map(args):
            errors.append((f"personalizations.{p}.custom_args", "Invalid type. Expected: string."))
        else:
            metadata.update(args)
    sender = data.get("from")
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str):
        errors.append(
            (
                "from.email",
                "The from object must be provided for every email send. It is an object that "
                "requires the email parameter, but may also contain a name parameter.",
            )
        )
        sender = {}
    elif "@" not in sender["email"]:
        errors.append(("from.email", "The from email does not contain a valid address."))
    subject = data.get("subject")
    if not isinstance(subject, str) or not subject:
        errors.append(
            (
                "subject",
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
            )
        )
    content = data.get("content")
    text = html = ""
    if not isinstance(content, list) or not content:
        errors.append(
            (
                "content",
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block.",
            )
        )
        content = []
    types = []
    for c, part in enumerate(content):
        if (
            not isinstance(part, dict)
            or not isinstance(part.get("value"), str)
            or not part["value"]
        ):
            errors.append(
                (
                    f"content.{c}.value",
                    "The content value must be a string at least one character in length.",
                )
            )
            continue
        types.append(part.get("type"))
        if part.get("type") == "text/plain":
            text = part["value"]
        elif part.get("type") == "text/html":
            html = part["value"]
    if "text/plain" in types and types.index("text/plain") != 0:
        errors.append(
            (
                "content",
                "If present, text/plain must be first, followed by text/html, followed by any "
                "other content.",
            )
        )
    headers = data.get("headers", {})
    if not _is_str_map(headers):
        errors.append(("headers", "Invalid type. Expected: string."))
        headers = {}
    top_args = data.get("custom_args", {})
    if _is_str_map(top_args):
        metadata = {**top_args, **metadata}
    categories = data.get("categories") or []
    if errors:
        raise _Refusal(_sendgrid_errors(400, errors))
    return _Parsed(
        recipients=recipients,
        from_address=_format_address(sender),
        subject=subject if isinstance(subject, str) else "",
        text=text,
        html=html,
        headers=dict(headers),
        metadata=metadata,
        tag=categories[0] if categories and isinstance(categories[0], str) else None,
        stream=None,
        raw=data,
    )


def _format_address(obj: Mapping[str, Any]) -> str:
    email = str(obj.get("email", ""))
    name = obj.get("name")
    return f"{name} <{email}>" if name else email


def _parse_mailgun(form: MultiDictProxy[Any], domain: str) -> _Parsed:
    def refuse(message: str) -> _Refusal:
        return _Refusal(_json({"message": message}, 400))

    def one(name: str) -> str:
        value = form.get(name)
        return value if isinstance(value, str) else ""

    sender = one("from")
    if not sender:
        raise refuse("'from' parameter is missing")
    if "@" not in sender:
        raise refuse("'from' parameter is not a valid address. please check documentation")
    recipients = [
        a.strip()
        for value in form.getall("to", [])
        if isinstance(value, str)
        for a in value.split(",")
        if a.strip()
    ]
    if not recipients:
        raise refuse("'to' parameter is missing")
    if any("@" not in a for a in recipients):
        raise refuse("'to' parameter is not a valid address. please check documentation")
    if not one("subject"):
        raise refuse("'subject' parameter is missing")
    if not any(one(k) for k in ("text", "html", "amp-html", "template")):
        raise refuse(
            "Need at least one of 'text', 'html', 'amp-html' or 'template' parameters specified"
        )
    headers: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for key, value in form.items():
        if not isinstance(value, str):
            continue
        if key.startswith("h:"):
            headers[key[2:]] = value
        elif key.startswith("v:"):
            metadata[key[2:]] = value
    variables = _find_header(headers, "X-Mailgun-Variables")
    if variables:
        try:
            decoded = orjson.loads(variables)
        except orjson.JSONDecodeError:
            raise refuse("'h:X-Mailgun-Variables' parameter is not valid JSON") from None
        if isinstance(decoded, dict):
            metadata = {**{k: str(v) for k, v in decoded.items()}, **metadata}
    raw = {k: form.getall(k) for k in form}
    return _Parsed(
        recipients=recipients,
        from_address=sender,
        subject=one("subject"),
        text=one("text"),
        html=one("html"),
        headers=headers,
        metadata=metadata,
        tag=one("o:tag") or None,
        stream=None,
        raw=raw,
        domain=domain,
    )


async def _serve(port: int) -> None:
    async with FakeProviders(port=port) as fake:
        print(f"fake providers on {fake.url}")
        for name, value in fake.env().items():
            print(f"  {name}={value}")
        print(f"  mailgun domain: {MAILGUN_DOMAIN}")
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
