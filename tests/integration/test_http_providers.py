"""Each HTTP provider over real HTTP against the local fake APIs on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from mailstream.providers.base import Accepted, Message, Provider, SendFailure
from mailstream.providers.mailgun import MailgunProvider, MailgunSettings
from mailstream.providers.postmark import PostmarkProvider, PostmarkSettings
from mailstream.providers.sendgrid import SendGridProvider, SendGridSettings
from tests.fakes.http_providers import MAILGUN_DOMAIN, FakeProviders

pytestmark = pytest.mark.timeout(30)

UNSUB = "<https://shop.example/u/abc>"

MakeProvider = Callable[..., Provider]


def make_postmark(url: str, env: dict[str, str], timeout: float = 2.0) -> Provider:
    return PostmarkProvider(PostmarkSettings(base_url=url, timeout=timeout), env)


def make_sendgrid(url: str, env: dict[str, str], timeout: float = 2.0) -> Provider:
    return SendGridProvider(SendGridSettings(base_url=url, timeout=timeout), env)


def make_mailgun(url: str, env: dict[str, str], timeout: float = 2.0) -> Provider:
    settings = MailgunSettings(base_url=url, timeout=timeout, domain=MAILGUN_DOMAIN)
    return MailgunProvider(settings, env)


PROVIDERS = pytest.mark.parametrize(
    "make",
    [
        pytest.param(make_postmark, id="postmark"),
        pytest.param(make_sendgrid, id="sendgrid"),
        pytest.param(make_mailgun, id="mailgun"),
    ],
)


def message(to: str = "ann@x.test", send_id: str = "s-1") -> Message:
    return Message(
        send_id=send_id,
        message_id=f"<{send_id}@mail.shop.example>",
        from_address="Shop <hello@shop.example>",
        to=to,
        subject="Spring sale",
        text="Hello",
        html="<p>Hello</p>",
        category="marketing",
        tenant_id="t1",
        user_id="u-42",
        headers={
            "X-Mailstream-Send-Id": send_id,
            "X-Mailstream-User-Id": "u-42",
            "List-Unsubscribe": UNSUB,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviders]:
    async with FakeProviders() as f:
        yield f


async def send(provider: Provider, msg: Message) -> Accepted | SendFailure:
    await provider.start()
    try:
        return await provider.send(msg)
    except SendFailure as failure:
        return failure
    finally:
        await provider.close()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@PROVIDERS
async def test_an_accepted_send_returns_the_provider_id(
    fake: FakeProviders, make: MakeProvider
) -> None:
    provider = make(fake.url, fake.env())
    result = await send(provider, message())

    assert isinstance(result, Accepted)
    [got] = fake.messages(provider=provider.name)
    assert result.provider_message_id == got.provider_message_id
    assert (got.to, got.subject, got.text, got.html) == (
        "ann@x.test",
        "Spring sale",
        "Hello",
        "<p>Hello</p>",
    )
    assert got.message_id == "<s-1@mail.shop.example>"
    assert got.headers["List-Unsubscribe"] == UNSUB
    assert got.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert got.headers["X-Mailstream-Send-Id"] == "s-1"
    assert got.metadata == {"send_id": "s-1", "user_id": "u-42", "tenant_id": "t1"}
    assert got.tag == "marketing"
    assert time.monotonic() - got.monotonic < 5


@PROVIDERS
async def test_a_scripted_429_500_ok_sequence(fake: FakeProviders, make: MakeProvider) -> None:
    fake.script("flaky@x.test", [("429", {"Retry-After": "1"}), ("500",), ("ok",)])
    provider = make(fake.url, fake.env())
    await provider.start()
    try:
        results: list[Any] = []
        for _ in range(3):
            try:
                results.append(await provider.send(message("flaky@x.test")))
            except SendFailure as failure:
                results.append(failure)
    finally:
        await provider.close()

    rate_limited, server_error, accepted = results
    assert isinstance(rate_limited, SendFailure)
    assert (rate_limited.code, rate_limited.retryable, rate_limited.retry_after) == (
        "http_429",
        True,
        1.0,
    )
    assert not rate_limited.invalid_recipient
    assert isinstance(server_error, SendFailure)
    assert (server_error.code, server_error.retryable) == ("http_500", True)
    assert isinstance(accepted, Accepted)
    assert [a.status for a in fake.attempts] == [
        429,
        500,
        200 if provider.name != "sendgrid" else 202,
    ]
    # one pooled connection for all three calls
    assert len({a.client_port for a in fake.attempts}) == 1


@PROVIDERS
@pytest.mark.parametrize("how", ["scripted", "malformed"])
async def test_an_invalid_recipient_is_permanent(
    fake: FakeProviders, make: MakeProvider, how: str
) -> None:
    if how == "scripted":
        to = "bad@x.test"
        fake.invalid(to)
    else:
        to = "no-at-sign.x.test"  # refused by the fake's own request validation
    result = await send(make(fake.url, fake.env()), message(to))

    assert isinstance(result, SendFailure)
    assert (result.retryable, result.invalid_recipient) == (False, True)
    assert result.code in ("http_400", "http_422")
    assert fake.received == []


@PROVIDERS
async def test_a_wrong_key_is_a_permanent_401(fake: FakeProviders, make: MakeProvider) -> None:
    wrong = {name: "wrong-key-zz9" for name in fake.env()}
    result = await send(make(fake.url, wrong), message())

    assert isinstance(result, SendFailure)
    assert (result.code, result.retryable, result.invalid_recipient) == ("http_401", False, False)
    assert "wrong-key-zz9" not in str(result)


@PROVIDERS
async def test_nobody_listening_is_a_retryable_connection_failure(make: MakeProvider) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    result = await send(make(url, FakeProviders().env()), message())

    assert isinstance(result, SendFailure)
    assert (result.code, result.retryable, result.invalid_recipient) == ("connection", True, False)


@PROVIDERS
async def test_a_slow_answer_is_a_retryable_timeout(
    fake: FakeProviders, make: MakeProvider
) -> None:
    fake.script("slow@x.test", [("sleep", 5.0)])
    started = time.monotonic()
    result = await send(make(fake.url, fake.env(), timeout=0.3), message("slow@x.test"))

    assert isinstance(result, SendFailure)
    assert (result.code, result.retryable) == ("timeout", True)
    assert time.monotonic() - started < 2


@PROVIDERS
async def test_a_dropped_connection_is_retryable(fake: FakeProviders, make: MakeProvider) -> None:
    fake.script("drop@x.test", ["disconnect"])
    result = await send(make(fake.url, fake.env()), message("drop@x.test"))

    assert isinstance(result, SendFailure)
    assert (result.code, result.retryable) == ("connection", True)


# -- the fake itself answers like the real APIs ------------------------------------------

PM = {"X-Postmark-Server-Token": "pm-fake-server-token", "Accept": "application/json"}
SG = {"Authorization": "Bearer SG.fake-key.local"}
MG = aiohttp.BasicAuth("api", "fake-mailgun-key")
GOOD_SG = {
    "personalizations": [{"to": [{"email": "a@x.test"}]}],
    "from": {"email": "f@x.test"},
    "subject": "s",
    "content": [{"type": "text/plain", "value": "hi"}],
}

REFUSALS = [
    pytest.param(
        "/email", {}, None, {"json": {}}, 401,
        {"ErrorCode": 10, "Message": "No Account or Server API tokens were supplied in the HTTP "
         "headers. Please add a header for either X-Postmark-Server-Token or "
         "X-Postmark-Account-Token."},
        id="postmark-no-token",
    ),
    pytest.param(
        "/email", PM, None, {"data": b"{", "headers": {"Content-Type": "application/json"}},
        422, {"ErrorCode": 402, "Message": "Received invalid JSON input."},
        id="postmark-bad-json",
    ),
    pytest.param(
        "/email", PM, None, {"json": {"From": "f@x.test", "To": "a@x.test", "Subject": "s"}},
        422, {"ErrorCode": 300, "Message": "Provide either email TextBody or HtmlBody or both."},
        id="postmark-no-body",
    ),
    pytest.param(
        "/v3/mail/send", {}, None, {"json": GOOD_SG}, 401,
        {"errors": [{"field": None, "message": "authorization required", "help": None}]},
        id="sendgrid-no-key",
    ),
    pytest.param(
        "/v3/mail/send", SG, None,
        {"json": {**GOOD_SG, "content": [{"type": "text/html", "value": "<p>"},
                                         {"type": "text/plain", "value": "p"}]}},
        400,
        {"errors": [{"field": "content", "message": "If present, text/plain must be first, "
                     "followed by text/html, followed by any other content.",
                     "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
                     "#message.content"}]},
        id="sendgrid-content-order",
    ),
    pytest.param(
        f"/v3/{MAILGUN_DOMAIN}/messages", {}, aiohttp.BasicAuth("api", "nope"),
        {"data": {"from": "f@x.test"}}, 401, "Forbidden", id="mailgun-wrong-key",
    ),
    pytest.param(
        f"/v3/{MAILGUN_DOMAIN}/messages", {}, MG,
        {"data": {"from": "f@x.test", "to": "a@x.test", "subject": "s"}}, 400,
        {"message": "Need at least one of 'text', 'html', 'amp-html' or 'template' parameters "
         "specified"},
        id="mailgun-no-body",
    ),
    pytest.param(
        "/v3/other.example/messages", {}, MG, {"data": {"from": "f@x.test"}}, 404,
        {"message": "Domain not found: other.example"}, id="mailgun-unknown-domain",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("path", "headers", "auth", "kwargs", "status", "body"), REFUSALS)
async def test_the_fake_refuses_like_the_real_api(
    fake: FakeProviders,
    path: str,
    headers: dict[str, str],
    auth: aiohttp.BasicAuth | None,
    kwargs: dict[str, Any],
    status: int,
    body: Any,
) -> None:
    extra = kwargs.pop("headers", {})
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            fake.url + path, headers={**headers, **extra}, auth=auth, **kwargs
        ) as response,
    ):
        assert response.status == status
        if isinstance(body, str):
            assert await response.text() == body
        else:
            assert await response.json() == body
    assert fake.received == []


async def test_the_fake_takes_mailgun_multipart_and_variables_json(fake: FakeProviders) -> None:
    form = aiohttp.FormData()
    for name, value in [
        ("from", "f@x.test"),
        ("to", "a@x.test, b@x.test"),
        ("subject", "s"),
        ("html", "<p>hi</p>"),
        ("h:X-Mailgun-Variables", '{"send_id": "s-9", "user_id": "u-1"}'),
    ]:
        form.add_field(name, value)
    form.add_field("f", b"bytes", filename="a.txt")  # forces multipart/form-data
    async with (
        aiohttp.ClientSession(auth=MG) as session,
        session.post(f"{fake.url}/v3/{MAILGUN_DOMAIN}/messages", data=form) as response,
    ):
        assert response.status == 200
        answer = await response.json()
    assert answer["message"] == "Queued. Thank you."
    got = await fake.wait_for(2, provider="mailgun")
    assert [g.to for g in got] == ["a@x.test", "b@x.test"]
    assert got[0].metadata == {"send_id": "s-9", "user_id": "u-1"}
    assert got[0].provider_message_id == answer["id"]
