"""What the HTTP email providers share: retry hints, failure classes, the session, error bodies."""

from __future__ import annotations

import logging
import math
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import aiohttp
import orjson
from pydantic import SecretStr

from mailstream.exceptions import ConfigError
from mailstream.providers.base import Accepted, Message, SendFailure

logger = logging.getLogger(__name__)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

JsonBody = dict[str, Any]
FormBody = list[tuple[str, str]]


class HttpRequest(NamedTuple):
    """One provider call, minus the credentials (the session adds those)."""

    path: str  # appended to base_url
    headers: dict[str, str]
    # a JSON object, form fields in order (names may repeat), or bytes sent as they are
    body: JsonBody | FormBody | bytes

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, dict):
            return orjson.dumps(self.body)
        return urllib.parse.urlencode(self.body).encode("ascii")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    body: bytes


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    ``now`` must be timezone-aware. A date in the past gives 0; anything unreadable, None.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, origin unknown (RFC 5322 3.3)
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def parse_reset_epoch(value: str | None, now: datetime) -> float | None:
    """Seconds until a rate-limit reset given as a Unix timestamp (``X-RateLimit-Reset``)."""
    if value is None:
        return None
    try:
        epoch = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(epoch) or epoch <= 0:
        return None
    return max(0.0, epoch - now.timestamp())


def classify_http(
    status: int,
    retry_after: float | None = None,
    code: str | int | None = None,
    message: str = "",
    invalid_recipient: bool = False,
    *,
    retryable: bool | None = None,
) -> SendFailure:
    """The SendFailure for an HTTP error answer.

    429, 408 and 5xx are retryable, every other status permanent; ``retryable`` overrides
    that when the provider's own error code says otherwise. ``code`` is the provider's
    own error code, kept in the message; the failure's code is always ``http_<status>``.
    An invalid recipient is never retryable.
    """
    if retryable is None:
        retryable = status in (408, 429) or 500 <= status <= 599
    if invalid_recipient:
        retryable = False
    text = message.strip() or _REASONS.get(status, "unexpected answer")
    if code is not None and code != "":
        text = f"[{code}] {text}"
    if 300 <= status <= 399:
        text += " (a redirect: check the provider's base_url)"
    return SendFailure(
        f"http_{status}",
        text,
        retryable=retryable,
        invalid_recipient=invalid_recipient,
        retry_after=retry_after if retryable else None,
    )


_REASONS = {
    400: "bad request",
    401: "unauthorized: check the API key",
    403: "forbidden",
    404: "not found",
    408: "request timeout",
    413: "payload too large",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


def read_json(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is empty, not JSON or not an object."""
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def body_text(body: bytes, limit: int = 300) -> str:
    """A short, single-line rendering of a body that is not the expected JSON."""
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return text[:limit]


def custom_headers(message: Message) -> list[tuple[str, str]]:
    """Message-ID first, then the message's own headers (never a second Message-ID)."""
    headers = [("Message-ID", message.message_id)]
    headers.extend(
        (name, value) for name, value in message.headers.items() if name.lower() != "message-id"
    )
    return headers


def read_api_key(env: Mapping[str, str], variable: str, config_key: str, what: str) -> SecretStr:
    """The key from ``env[variable]``; ConfigError naming the key path and variable if unset."""
    value = env.get(variable, "").strip()
    if not value:
        state = "is empty" if variable in env else "is not set"
        raise ConfigError(
            f"{config_key}.api_key_env: the environment variable {variable} {state}; "
            f"set it to the {what}"
        )
    return SecretStr(value)


def key_reader(
    env: Mapping[str, str], variable: str, config_key: str, what: str
) -> Callable[[], SecretStr]:
    """``read_api_key`` for later (start()), holding the environment in a closure, so
    neither ``vars()`` nor a repr of the provider shows it."""
    return lambda: read_api_key(env, variable, config_key, what)


class HttpSession:
    """One aiohttp session per provider: pooled connections, one timeout, the credentials.

    The credentials are applied here and nowhere else, so they never reach a request
    description, a log line or an error message.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float,
        *,
        auth_headers: Mapping[str, SecretStr] | None = None,
        basic_auth: tuple[str, SecretStr] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._auth_headers = dict(auth_headers or {})
        self._basic_auth = basic_auth
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"HttpSession(base_url={self.base_url!r}, timeout={self.timeout:g})"

    async def start(self) -> None:
        if self._session is not None:
            return
        auth = None
        if self._basic_auth is not None:
            user, password = self._basic_auth
            auth = aiohttp.BasicAuth(user, password.get_secret_value())
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={k: v.get_secret_value() for k, v in self._auth_headers.items()},
            auth=auth,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(self, request: HttpRequest) -> HttpResponse:
        """Send ``request``; a timeout or a connection problem becomes a retryable failure."""
        if self._session is None:
            raise RuntimeError("the provider is not started: call start() before send()")
        url = self.base_url + request.path
        try:
            async with self._session.post(
                url, data=request.encode(), headers=request.headers, allow_redirects=False
            ) as response:
                body = await response.read()
                return HttpResponse(response.status, response.headers, body)
        except TimeoutError:
            # aiohttp's own timeout errors are TimeoutErrors too, so this comes first
            raise SendFailure(
                "timeout",
                f"no answer from {self.base_url} within {self.timeout:g}s",
                retryable=True,
            ) from None
        except aiohttp.ClientError as exc:
            raise SendFailure(
                "connection", f"{self.base_url}: {type(exc).__name__}: {exc}", retryable=True
            ) from None
        except OSError as exc:
            raise SendFailure(
                "connection", f"{self.base_url}: {exc.strerror or exc}", retryable=True
            ) from None


class HttpProvider:
    """What the HTTP providers share: one session opened by ``start``, a POST per
    message, the answer turned into Accepted or a SendFailure. A provider says how to
    open its session (its credentials), build its request and read its answer."""

    name = "http"
    key_what = "API key"  # what the key is called in the error when it is missing

    def __init__(
        self, settings: Any, env: Mapping[str, str], *, config_key: str | None = None
    ) -> None:
        """``settings`` names the key's variable (``api_key_env``); the key is read from
        ``env`` when the provider starts."""
        self.settings = settings
        where = config_key or f"providers.{self.name}"
        self._read_key = key_reader(env, settings.api_key_env, where, self.key_what)
        self._http: HttpSession | None = None

    def _open(self) -> HttpSession:
        raise NotImplementedError

    def _request(self, message: Message) -> HttpRequest:
        raise NotImplementedError

    def _accepted(self, response: HttpResponse) -> Accepted | None:
        """The provider took the message; None when the answer is a refusal."""
        raise NotImplementedError

    def _refusal(self, response: HttpResponse) -> SendFailure:
        raise NotImplementedError

    async def start(self) -> None:
        if self._http is not None:
            return
        self._http = self._open()
        await self._http.start()

    async def send(self, message: Message) -> Accepted:
        if self._http is None:
            raise RuntimeError(f"{type(self).__name__} is not started: call start() before send()")
        response = await self._http.post(self._request(message))
        accepted = self._accepted(response)
        if accepted is not None:
            return accepted
        failure = self._refusal(response)
        logger.debug("%s refused %s: %s", self.name, message.send_id, failure)
        raise failure

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()
