"""HTTP providers' pure core: request building, error classification, Retry-After, secrets."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from mailstream.exceptions import ConfigError
from mailstream.providers import mailgun, postmark, sendgrid
from mailstream.providers.base import Message, SendFailure
from mailstream.providers.http_common import (
    FORM,
    JSON,
    HttpRequest,
    classify_http,
    parse_reset_epoch,
    parse_retry_after,
    read_api_key,
)
from mailstream.providers.mailgun import MailgunProvider, MailgunSettings
from mailstream.providers.postmark import PostmarkProvider, PostmarkSettings
from mailstream.providers.sendgrid import SendGridProvider, SendGridSettings

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SECRET = "SG.very-secret-key-1234567890"
UNSUB = "<https://shop.example/u/abc>, <mailto:unsub@shop.example?subject=u-abc>"


def message(**changes: Any) -> Message:
    fields: dict[str, Any] = {
        "send_id": "s-1",
        "message_id": "<s-1@mail.shop.example>",
        "from_address": "Shop <hello@shop.example>",
        "to": "ann@example.com",
        "subject": "Your receipt",
        "text": "Thanks!",
        "html": "<p>Thanks!</p>",
        "category": "transactional",
        "tenant_id": "t1",
        "user_id": "u-42",
        "headers": {"X-Mailstream-Send-Id": "s-1", "X-Mailstream-User-Id": "u-42"},
    }
    fields.update(changes)
    return Message(**fields)


MARKETING = message(
    category="marketing",
    reply_to="Care <care@shop.example>",
    headers={
        "X-Mailstream-Send-Id": "s-1",
        "X-Mailstream-User-Id": "u-42",
        "List-Unsubscribe": UNSUB,
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    },
)
METADATA = {"send_id": "s-1", "user_id": "u-42", "tenant_id": "t1"}


# -- build_request ---------------------------------------------------------------------


def test_postmark_transactional_request() -> None:
    path, headers, body = postmark.build_request(message(), PostmarkSettings())

    assert path == "/email"
    assert headers == {"Accept": JSON, "Content-Type": JSON}
    assert body == {
        "From": "Shop <hello@shop.example>",
        "To": "ann@example.com",
        "Subject": "Your receipt",
        "TextBody": "Thanks!",
        "HtmlBody": "<p>Thanks!</p>",
        "Tag": "transactional",
        "Headers": [
            {"Name": "Message-ID", "Value": "<s-1@mail.shop.example>"},
            {"Name": "X-Mailstream-Send-Id", "Value": "s-1"},
            {"Name": "X-Mailstream-User-Id", "Value": "u-42"},
        ],
        "Metadata": METADATA,
        "MessageStream": "outbound",
    }


def test_postmark_marketing_goes_to_the_broadcast_stream_with_unsubscribe_headers() -> None:
    settings = PostmarkSettings(message_stream_marketing="newsletters")
    _, _, body = postmark.build_request(MARKETING, settings)

    assert isinstance(body, dict)
    assert body["MessageStream"] == "newsletters"
    assert body["ReplyTo"] == "Care <care@shop.example>"
    assert {"Name": "List-Unsubscribe", "Value": UNSUB} in body["Headers"]
    assert {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"} in body[
        "Headers"
    ]


def test_sendgrid_request() -> None:
    path, headers, body = sendgrid.build_request(MARKETING, SendGridSettings())

    assert path == "/v3/mail/send"
    assert headers == {"Content-Type": JSON}
    assert "Authorization" not in headers
    assert body == {
        "personalizations": [{"to": [{"email": "ann@example.com"}], "custom_args": METADATA}],
        "from": {"email": "hello@shop.example", "name": "Shop"},
        "reply_to": {"email": "care@shop.example", "name": "Care"},
        "subject": "Your receipt",
        "content": [
            {"type": "text/plain", "value": "Thanks!"},
            {"type": "text/html", "value": "<p>Thanks!</p>"},
        ],
        "headers": {
            "Message-ID": "<s-1@mail.shop.example>",
            "X-Mailstream-Send-Id": "s-1",
            "X-Mailstream-User-Id": "u-42",
            "List-Unsubscribe": UNSUB,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "categories": ["marketing"],
    }


def test_mailgun_request_is_form_fields_in_order() -> None:
    request = mailgun.build_request(MARKETING, MailgunSettings(domain="mg.shop.example"))

    assert request.path == "/v3/mg.shop.example/messages"
    assert request.headers == {"Content-Type": FORM}
    assert request.body == [
        ("from", "Shop <hello@shop.example>"),
        ("to", "ann@example.com"),
        ("subject", "Your receipt"),
        ("text", "Thanks!"),
        ("html", "<p>Thanks!</p>"),
        ("h:Message-Id", "<s-1@mail.shop.example>"),
        ("h:X-Mailstream-Send-Id", "s-1"),
        ("h:X-Mailstream-User-Id", "u-42"),
        ("h:List-Unsubscribe", UNSUB),
        ("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("h:Reply-To", "Care <care@shop.example>"),
        ("o:tag", "marketing"),
        ("v:send_id", "s-1"),
        ("v:user_id", "u-42"),
        ("v:tenant_id", "t1"),
    ]
    decoded = urllib.parse.parse_qsl(request.encode().decode("ascii"))
    assert decoded == request.body


@pytest.mark.parametrize(
    ("build", "settings"),
    [
        pytest.param(postmark.build_request, PostmarkSettings(), id="postmark"),
        pytest.param(sendgrid.build_request, SendGridSettings(), id="sendgrid"),
        pytest.param(mailgun.build_request, MailgunSettings(domain="mg.x.test"), id="mailgun"),
    ],
)
def test_an_empty_part_is_left_out_and_message_id_is_never_doubled(
    build: Any, settings: Any
) -> None:
    msg = message(html="", headers={"message-id": "<other@x>", "X-A": "1"})
    request: HttpRequest = build(msg, settings)
    shown = str(request.body)

    assert "<other@x>" not in shown
    assert shown.count("<s-1@mail.shop.example>") == 1
    assert "<p>" not in shown and "text/html" not in shown
    assert "X-A" in shown


def test_json_bodies_encode_as_json() -> None:
    request = sendgrid.build_request(message(), SendGridSettings())
    assert orjson.loads(request.encode()) == request.body


# -- classify: the providers' documented error bodies ----------------------------------

ONE_BOUNCE = (
    "You tried to send to a recipient that has been marked as inactive.\n"
    "Found inactive addresses: test@test.com.\n"
    "Inactive recipients are ones that have generated a hard bounce or a spam complaint."
)


def pm(code: int, text: str) -> bytes:
    return orjson.dumps({"ErrorCode": code, "Message": text})


def sg(*errors: tuple[str | None, str]) -> bytes:
    return orjson.dumps({"errors": [{"message": m, "field": f, "help": None} for f, m in errors]})


def mg(text: str) -> bytes:
    return orjson.dumps({"message": text})


# (classify, status, headers, body, code, retryable, invalid_recipient, retry_after)
CLASSIFY_CASES = [
    pytest.param(
        postmark.classify, 422, {}, pm(406, ONE_BOUNCE), "http_422", False, True, None,
        id="postmark-406-inactive-recipient",
    ),
    pytest.param(
        postmark.classify, 422, {}, pm(300, "Invalid 'To' address: 'foo@bar'."),
        "http_422", False, True, None, id="postmark-300-invalid-to",
    ),
    pytest.param(
        postmark.classify, 422, {},
        pm(300, "Error parsing 'To': Illegal email address 'World'. It must contain the '@'."),
        "http_422", False, True, None, id="postmark-300-error-parsing-to",
    ),
    pytest.param(
        postmark.classify, 422, {},
        pm(300, "Invalid 'From' address: 'sender@example.com' is not a verified sender signature."),
        "http_422", False, False, None, id="postmark-300-unverified-from-is-ours",
    ),
    pytest.param(
        postmark.classify, 401, {}, pm(10, "Request does not contain a valid Server token."),
        "http_401", False, False, None, id="postmark-401-bad-token",
    ),
    pytest.param(
        postmark.classify, 429, {"Retry-After": "5"}, pm(429, "Rate limit exceeded."),
        "http_429", True, False, 5.0, id="postmark-429",
    ),
    pytest.param(
        postmark.classify, 500, {}, b"Internal Server Error", "http_500", True, False, None,
        id="postmark-500-plain-text",
    ),
    pytest.param(
        postmark.classify, 422, {}, pm(100, "Maintenance"), "http_422", True, False, None,
        id="postmark-100-maintenance-is-retryable",
    ),
    pytest.param(
        sendgrid.classify, 400, {},
        sg(("personalizations.0.to.0.email", "Does not contain a valid address.")),
        "http_400", False, True, None, id="sendgrid-400-invalid-to",
    ),
    pytest.param(
        sendgrid.classify, 400, {},
        sg(("personalizations.0.to.0.email", "The to email parameter is required.")),
        "http_400", False, True, None, id="sendgrid-400-empty-to",
    ),
    pytest.param(
        sendgrid.classify, 400, {},
        sg(("custom_args", "Invalid type. Expected: object, given: string.")),
        "http_400", False, False, None, id="sendgrid-400-our-mistake",
    ),
    pytest.param(
        sendgrid.classify, 401, {},
        sg((None, "The provided authorization grant is invalid, expired, or revoked")),
        "http_401", False, False, None, id="sendgrid-401",
    ),
    pytest.param(
        sendgrid.classify, 429,
        {"X-RateLimit-Limit": "150", "X-RateLimit-Remaining": "0",
         "X-RateLimit-Reset": str(int(NOW.timestamp()) + 7)},
        sg((None, "too many requests")), "http_429", True, False, 7.0,
        id="sendgrid-429-ratelimit-reset",
    ),
    pytest.param(
        sendgrid.classify, 429,
        {"Retry-After": "2", "X-RateLimit-Reset": str(int(NOW.timestamp()) + 7)},
        sg((None, "too many requests")), "http_429", True, False, 2.0,
        id="sendgrid-429-retry-after-wins",
    ),
    pytest.param(
        sendgrid.classify, 503, {}, b"<html>503 Service Unavailable</html>",
        "http_503", True, False, None, id="sendgrid-503-html",
    ),
    pytest.param(
        mailgun.classify, 400, {},
        mg("'to' parameter is not a valid address. please check documentation"),
        "http_400", False, True, None, id="mailgun-400-invalid-to",
    ),
    pytest.param(
        mailgun.classify, 400, {},
        mg("'from' parameter is not a valid address. please check documentation"),
        "http_400", False, False, None, id="mailgun-400-invalid-from-is-ours",
    ),
    pytest.param(
        mailgun.classify, 401, {}, b"Forbidden", "http_401", False, False, None,
        id="mailgun-401-plain-forbidden",
    ),
    pytest.param(
        mailgun.classify, 403, {},
        mg("Domain mg.example.com is not allowed to send: Free accounts are for test purposes "
           "only. Please upgrade or add the address to authorized recipients in Account "
           "Settings."),
        "http_403", False, False, None, id="mailgun-403-sandbox",
    ),
    pytest.param(
        mailgun.classify, 429, {"Retry-After": "Sun, 01 Mar 2026 12:00:30 GMT"},
        mg("Too many requests"), "http_429", True, False, 30.0, id="mailgun-429-http-date",
    ),
    pytest.param(
        mailgun.classify, 502, {}, b"<html><body>Bad Gateway</body></html>",
        "http_502", True, False, None, id="mailgun-502",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("classify", "status", "headers", "body", "code", "retryable", "invalid", "retry_after"),
    CLASSIFY_CASES,
)
def test_classify(
    classify: Any,
    status: int,
    headers: dict[str, str],
    body: bytes,
    code: str,
    retryable: bool,
    invalid: bool,
    retry_after: float | None,
) -> None:
    failure = classify(status, headers, body, now=NOW)

    assert isinstance(failure, SendFailure)
    assert (failure.code, failure.retryable, failure.invalid_recipient) == (
        code,
        retryable,
        invalid,
    )
    assert failure.retry_after == retry_after
    assert failure.message  # the provider's words, or at least the status's


def test_classify_keeps_the_providers_words() -> None:
    failure = postmark.classify(422, {}, pm(406, ONE_BOUNCE), now=NOW)
    assert failure.message.startswith("[ErrorCode 406] You tried to send")
    failure = sendgrid.classify(
        400, {}, sg(("personalizations.0.to.0.email", "Does not contain a valid address.")), now=NOW
    )
    assert failure.message == "Does not contain a valid address. (personalizations.0.to.0.email)"
    assert len(mailgun.classify(500, {}, b"x" * 5000, now=NOW).message) <= 500


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (403, False), (404, False), (408, True), (413, False),
     (422, False), (429, True), (500, True), (502, True), (503, True), (504, True),
     (301, False)],
)  # fmt: skip
def test_classify_http_by_status(status: int, retryable: bool) -> None:
    failure = classify_http(status, 3.0)
    assert failure.code == f"http_{status}"
    assert failure.retryable is retryable
    # a hint to wait only means something for a failure worth retrying
    assert failure.retry_after == (3.0 if retryable else None)


def test_an_invalid_recipient_is_never_retried() -> None:
    failure = classify_http(503, 3.0, None, "bad address", True)
    assert (failure.retryable, failure.invalid_recipient, failure.retry_after) == (
        False,
        True,
        None,
    )


# -- Retry-After -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("120", 120.0, id="seconds"),
        pytest.param(" 3 ", 3.0, id="padded"),
        pytest.param("1.5", 1.5, id="fractional"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("Sun, 01 Mar 2026 12:01:00 GMT", 60.0, id="http-date"),
        pytest.param("Sunday, 01-Mar-26 12:00:10 GMT", 10.0, id="obsolete-rfc850-date"),
        pytest.param("Sun Mar  1 12:00:10 2026", 10.0, id="obsolete-asctime-date"),
        pytest.param("Sun, 01 Mar 2026 11:00:00 GMT", 0.0, id="date-in-the-past"),
        pytest.param("Sun, 01 Mar 2026 13:00:05 +0100", 5.0, id="date-with-offset"),
        pytest.param("Sun, 01 Mar 2026 12:00:05 -0000", 5.0, id="date-unknown-zone"),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("-5", None, id="negative"),
        pytest.param("nan", None, id="nan"),
        pytest.param("inf", None, id="infinite"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (str(int(NOW.timestamp()) + 7), 7.0),
        (str(int(NOW.timestamp()) - 7), 0.0),
        ("0", None),
        ("soon", None),
        (None, None),
    ],
)
def test_parse_reset_epoch(value: str | None, expected: float | None) -> None:
    assert parse_reset_epoch(value, NOW) == expected


def test_retry_after_counts_from_the_given_now() -> None:
    later = NOW + timedelta(seconds=50)
    assert parse_retry_after("Sun, 01 Mar 2026 12:01:00 GMT", later) == 10.0


# -- settings --------------------------------------------------------------------------


def test_settings_defaults_point_at_the_real_apis() -> None:
    assert PostmarkSettings().base_url == "https://api.postmarkapp.com"
    assert PostmarkSettings().api_key_env == "POSTMARK_SERVER_TOKEN"
    assert PostmarkSettings().message_stream_transactional == "outbound"
    assert PostmarkSettings().message_stream_marketing == "broadcast"
    assert SendGridSettings().base_url == "https://api.sendgrid.com"
    assert SendGridSettings().api_key_env == "SENDGRID_API_KEY"
    mg_settings = MailgunSettings(domain="MG.Example.com")
    assert (mg_settings.base_url, mg_settings.domain) == (
        "https://api.mailgun.net",
        "mg.example.com",
    )
    assert mg_settings.api_key_env == "MAILGUN_API_KEY"
    assert SendGridSettings().timeout == 10.0
    assert SendGridSettings(timeout="1500ms").timeout == 1.5
    assert SendGridSettings(base_url="http://127.0.0.1:9000/").base_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("model", "raw", "where", "words"),
    [
        (MailgunSettings, {}, "domain", "Field required"),
        (MailgunSettings, {"domain": "not a domain"}, "domain", "not a domain name"),
        (SendGridSettings, {"base_url": "api.sendgrid.com"}, "base_url", "http(s)://"),
        (SendGridSettings, {"base_url": "https://u:p@api.sendgrid.com"}, "base_url", "without"),
        (SendGridSettings, {"timeout": "0s"}, "timeout", "greater than 0"),
        (SendGridSettings, {"api_key": "x"}, "api_key", "Extra inputs"),
        (PostmarkSettings, {"message_stream_marketing": ""}, "message_stream_marketing", ""),
    ],
)
def test_settings_errors_name_the_field(
    model: Any, raw: dict[str, Any], where: str, words: str
) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(raw)
    [error] = info.value.errors()
    assert error["loc"] == (where,)
    assert words in error["msg"]


def test_a_key_pasted_as_the_variable_name_is_not_echoed() -> None:
    with pytest.raises(ValidationError) as info:
        SendGridSettings(api_key_env=SECRET)
    assert SECRET not in str(info.value)
    assert "NAME of an environment variable" in str(info.value)


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SendGridSettings().timeout = 3  # type: ignore[misc]


# -- keys: read at start, never shown --------------------------------------------------


@pytest.mark.parametrize(
    ("env", "state"), [({}, "is not set"), ({"SENDGRID_API_KEY": "  "}, "is empty")]
)
async def test_a_missing_key_is_a_config_error_naming_key_and_variable(
    env: dict[str, str], state: str
) -> None:
    provider = SendGridProvider(SendGridSettings(), env, config_key="providers.sendgrid")
    with pytest.raises(ConfigError) as info:
        await provider.start()
    assert str(info.value) == (
        f"providers.sendgrid.api_key_env: the environment variable SENDGRID_API_KEY {state}; "
        "set it to the SendGrid API key"
    )


def test_read_api_key_hides_the_value() -> None:
    key = read_api_key({"K": SECRET}, "K", "providers.x", "key")
    assert key.get_secret_value() == SECRET
    assert SECRET not in repr(key) and SECRET not in str(key)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda env: PostmarkProvider(PostmarkSettings(api_key_env="K"), env), id="pm"),
        pytest.param(lambda env: SendGridProvider(SendGridSettings(api_key_env="K"), env), id="sg"),
        pytest.param(
            lambda env: MailgunProvider(MailgunSettings(api_key_env="K", domain="mg.x.test"), env),
            id="mg",
        ),
    ],
)
async def test_the_key_never_shows_in_reprs(make: Any) -> None:
    provider = make({"K": SECRET})
    assert SECRET not in repr(provider) and SECRET not in str(provider)
    await provider.start()
    try:
        assert SECRET not in repr(provider) and SECRET not in str(provider)
        assert SECRET not in repr(provider._http) and SECRET not in repr(vars(provider))
    finally:
        await provider.close()
    await provider.close()  # twice is harmless


def test_a_send_failure_carries_no_key() -> None:
    body = sg((None, "The provided authorization grant is invalid, expired, or revoked"))
    failure = sendgrid.classify(401, {"Authorization": f"Bearer {SECRET}"}, body, now=NOW)
    for text in (str(failure), repr(failure), failure.message):
        assert SECRET not in text


async def test_send_before_start_says_what_to_do() -> None:
    provider = SendGridProvider(SendGridSettings(), {"SENDGRID_API_KEY": SECRET})
    with pytest.raises(RuntimeError, match="call start"):
        await provider.send(message())
