"""The MIME builder, SMTP reply classification and the SMTP and outbox settings."""

from __future__ import annotations

import dataclasses
import email.policy
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from pydantic import ValidationError

from mailstream.exceptions import ConfigError
from mailstream.providers.base import Message, SendFailure
from mailstream.providers.eml_files import OutboxProvider, OutboxSettings
from mailstream.providers.mime import build_mime, message_id_for, mime_bytes
from mailstream.providers.smtp import (
    SmtpProvider,
    SmtpSettings,
    classify_smtp,
    failure_from,
)

WHEN = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
UNSUBSCRIBE = (
    "<https://shop.example.com/unsubscribe/" + "t" * 120 + ">, "
    "<mailto:unsubscribe@shop.example.com?subject=unsubscribe-" + "u" * 30 + ">"
)


def message(**changes: Any) -> Message:
    base = Message(
        send_id="0f3a9c",
        message_id="<0f3a9c@mail.shop.example.com>",
        from_address="Shop <news@shop.example.com>",
        to="ada@example.org",
        subject="Your cart misses you",
        text="Hello Ada,\nyour cart is waiting.\n",
        html="<p>Hello Ada,</p><p>your cart is waiting.</p>",
        category="marketing",
        tenant_id="default",
        user_id="u-42",
        headers={
            "X-Mailstream-Send-Id": "0f3a9c",
            "X-Mailstream-User-Id": "u-42",
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        reply_to="help@shop.example.com",
    )
    return dataclasses.replace(base, **changes)


def wire(msg: Message) -> EmailMessage:
    """Build, serialise and parse back, as a receiving server would."""
    parsed = BytesParser(policy=email.policy.default).parsebytes(
        mime_bytes(build_mime(msg, date=WHEN))
    )
    assert isinstance(parsed, EmailMessage)
    return parsed


# -- build_mime --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("From", "Shop <news@shop.example.com>"),
        ("To", "ada@example.org"),
        ("Subject", "Your cart misses you"),
        ("Date", "Wed, 01 May 2024 09:30:00 +0000"),
        ("Message-ID", "<0f3a9c@mail.shop.example.com>"),
        ("Reply-To", "help@shop.example.com"),
        ("X-Mailstream-Send-Id", "0f3a9c"),
        ("X-Mailstream-User-Id", "u-42"),
        ("List-Unsubscribe", UNSUBSCRIBE),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("MIME-Version", "1.0"),
    ],
)
def test_headers_survive_the_wire(header: str, expected: str) -> None:
    assert wire(message())[header] == expected


def test_no_reply_to_when_unset() -> None:
    assert "Reply-To" not in wire(message(reply_to=None))


def test_parts_are_text_then_html_in_utf8() -> None:
    parsed = wire(message(text="Grüße ☕\n", html="<p>Grüße ☕</p>"))

    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    # line ends are CRLF on the wire
    assert parts[0].get_content().replace("\r\n", "\n") == "Grüße ☕\n"
    assert parts[1].get_content().replace("\r\n", "\n") == "<p>Grüße ☕</p>\n"
    assert all("MIME-Version" not in p for p in parts)


@pytest.mark.parametrize(
    "subject",
    [
        "Grüße aus München",
        "Votre panier vous attend — 20 % de réduction",
        "ご注文ありがとうございます",
        "🛒 Still thinking it over?",
        "Ελληνικά και English mixed " * 4,  # long enough to fold
    ],
)
def test_non_ascii_subject_round_trips_encoded(subject: str) -> None:
    raw = mime_bytes(build_mime(message(subject=subject), date=WHEN))
    head = raw.split(b"\r\n\r\n", 1)[0]

    assert head.isascii()  # RFC 2047 encoded words, not raw UTF-8
    assert b"=?utf-8?" in head
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert parsed["Subject"] == subject


def test_long_list_unsubscribe_is_folded_between_items_never_encoded() -> None:
    raw = mime_bytes(build_mime(message(), date=WHEN))
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    block = head[head.index("List-Unsubscribe:") :].split("\r\nList-Unsubscribe-Post")[0]

    assert "=?" not in block
    assert block.splitlines()[1].startswith(" <mailto:")
    assert all(len(line) <= 998 for line in head.splitlines())


def test_same_message_same_bytes() -> None:
    assert mime_bytes(build_mime(message(), date=WHEN)) == mime_bytes(
        build_mime(message(), date=WHEN)
    )


def test_date_keeps_its_offset() -> None:
    paris = datetime(2024, 5, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    assert build_mime(message(), date=paris)["Date"] == "Wed, 01 May 2024 11:30:00 +0200"


def test_naive_date_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_mime(message(), date=datetime(2024, 5, 1, 9, 30))  # noqa: DTZ001 - naive on purpose


INJECTIONS = ["x\r\nBcc: victim@example.net", "x\nBcc: victim@example.net", "x\rBcc: v@e.net"]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize(
    ("field", "header"),
    [
        ("subject", "Subject"),
        ("to", "To"),
        ("from_address", "From"),
        ("reply_to", "Reply-To"),
        ("message_id", "Message-ID"),
    ],
)
def test_line_breaks_in_own_headers_are_refused(field: str, header: str, payload: str) -> None:
    with pytest.raises(ValueError, match=f"header {header} contains a line break"):
        build_mime(message(**{field: payload}), date=WHEN)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_line_breaks_in_extra_headers_are_refused(payload: str) -> None:
    with pytest.raises(ValueError, match="header List-Unsubscribe contains a line break"):
        build_mime(message(headers={"List-Unsubscribe": payload}), date=WHEN)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("X-Evil\r\nBcc", "not a valid field name"),
        ("X Space", "not a valid field name"),
        ("X:Colon", "not a valid field name"),
        ("", "not a valid field name"),
        ("bcc", "set from the message itself"),
        ("Message-Id", "set from the message itself"),
        ("Content-Type", "set from the message itself"),
    ],
)
def test_bad_extra_header_names_are_refused(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        build_mime(message(headers={name: "x"}), date=WHEN)


def test_non_ascii_extra_header_is_encoded() -> None:
    parsed = wire(message(headers={"X-Campaign": "Été 2024"}))
    assert parsed["X-Campaign"] == "Été 2024"


@pytest.mark.parametrize(
    ("send_id", "domain", "expected"),
    [
        ("0f3a9c", "mail.example.com", "<0f3a9c@mail.example.com>"),
        ("a" * 32, "example.org", f"<{'a' * 32}@example.org>"),
    ],
)
def test_message_id_for(send_id: str, domain: str, expected: str) -> None:
    assert message_id_for(send_id, domain) == expected
    assert build_mime(message(message_id=expected), date=WHEN)["Message-ID"] == expected


# -- classify_smtp -----------------------------------------------------------------------


def reply(line: str) -> tuple[int, str]:
    """Split a reply line as aiosmtplib does: the code, then the rest."""
    return int(line[:3]), line[4:]


# (reply line, retryable, invalid_recipient)
REPLIES = [
    ("550 5.1.1 <x@y>: Recipient address rejected: User unknown", False, True),
    ("550 5.1.1 The email account that you tried to reach does not exist.", False, True),
    ("550 Requested action not taken: mailbox unavailable", False, True),
    ("551 5.1.6 User not local; please try <forward@example.com>", False, True),
    ("553 5.1.3 Bad recipient address syntax", False, True),
    ("553 sorry, that domain isn't in my list of allowed rcpthosts", False, True),
    ("554 5.1.2 <x@nowhere.invalid>: Recipient address rejected: Domain not found", False, True),
    ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", False, True),
    ("552 5.2.2 Mailbox full", False, False),
    ("552 Requested mail action aborted: exceeded storage allocation", False, False),
    ("554 5.7.1 Relay access denied", False, False),
    ("550 5.7.1 Message rejected as spam by Content Filtering", False, False),
    ("550 5.7.26 Unauthenticated email from example.com is not accepted", False, False),
    ("554 Transaction failed", False, False),
    ("535 5.7.8 Authentication credentials invalid", False, False),
    ("421 4.7.0 Try again later", True, False),
    ("421 Service not available, closing transmission channel", True, False),
    ("450 4.2.1 Mailbox temporarily unavailable", True, False),
    ("451 4.3.0 Temporary local problem - please try later", True, False),
    ("451 4.7.1 Greylisted, see http://postgrey.schweikert.ch/", True, False),
    ("452 4.2.2 Mailbox full", True, False),
    ("454 4.7.0 TLS not available due to local problem", True, False),
    ("450 4.1.1 <x@y>: Recipient address rejected: unverified address", True, False),
]


@pytest.mark.parametrize(("line", "retryable", "invalid"), REPLIES)
def test_classify_smtp(line: str, retryable: bool, invalid: bool) -> None:
    code, text = reply(line)
    failure = classify_smtp(code, text)

    assert isinstance(failure, SendFailure)
    assert failure.code == f"smtp_{code}"
    assert failure.retryable is retryable
    assert failure.invalid_recipient is invalid
    assert failure.message == text


@pytest.mark.parametrize(
    ("line", "stage", "invalid"),
    [
        ("550 5.1.1 User unknown", "data", True),  # one recipient per message
        ("550 Message content rejected", "data", False),
        ("553 5.1.8 Sender address domain does not exist", "mail", False),
        ("550 5.1.0 Sender rejected", "mail", False),
        ("554 5.1.1 nope", "connect", False),
    ],
)
def test_only_recipient_stages_blame_the_address(line: str, stage: Any, invalid: bool) -> None:
    code, text = reply(line)
    failure = classify_smtp(code, text, stage=stage)
    assert failure.retryable is False
    assert failure.invalid_recipient is invalid


def test_the_code_repeated_in_the_text_is_understood() -> None:
    assert classify_smtp(550, "550 5.7.1 Relay denied").invalid_recipient is False


@pytest.mark.parametrize(
    ("exc", "code", "retryable", "invalid"),
    [
        (
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(550, "5.1.1 User unknown", "<x@y>")]
            ),
            "smtp_550",
            False,
            True,
        ),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(421, "4.7.0 Try again later", "<x@y>")]
            ),
            "smtp_421",
            True,
            False,
        ),
        (aiosmtplib.SMTPSenderRefused(553, "5.1.8 Bad sender", "a@b"), "smtp_553", False, False),
        (aiosmtplib.SMTPDataError(554, "5.7.1 Spam"), "smtp_554", False, False),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Bad creds"), "smtp_535", False, False),
        (aiosmtplib.SMTPAuthenticationError(454, "4.7.0 Try later"), "smtp_454", True, False),
        (aiosmtplib.SMTPConnectResponseError(554, "No service"), "smtp_554", False, False),
        (aiosmtplib.SMTPConnectTimeoutError("Timed out connecting"), "timeout", True, False),
        (aiosmtplib.SMTPReadTimeoutError("Timed out waiting"), "timeout", True, False),
        (TimeoutError(), "timeout", True, False),
        (aiosmtplib.SMTPConnectError("Error connecting to x on port 1"), "connection", True, False),
        (aiosmtplib.SMTPServerDisconnected("Connection lost"), "connection", True, False),
        (ConnectionResetError(104, "Connection reset by peer"), "connection", True, False),
        (aiosmtplib.SMTPNotSupported("SMTPUTF8 not supported"), "smtp_not_supported", False, False),
        (aiosmtplib.SMTPException("No suitable authentication method"), "smtp_error", False, False),
    ],
)
def test_failure_from_exceptions(
    exc: BaseException, code: str, retryable: bool, invalid: bool
) -> None:
    failure = failure_from(exc)
    assert (failure.code, failure.retryable, failure.invalid_recipient) == (
        code,
        retryable,
        invalid,
    )


# -- settings ----------------------------------------------------------------------------


def test_smtp_settings_defaults() -> None:
    s = SmtpSettings(host="smtp.example.com")
    assert (s.port, s.tls, s.username, s.password_env, s.timeout, s.connections) == (
        587,
        "starttls",
        None,
        None,
        10.0,
        1,
    )


def test_smtp_settings_take_durations_and_forbid_unknown_keys() -> None:
    assert SmtpSettings(host="h", timeout="1m").timeout == 60.0
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SmtpSettings.model_validate({"host": "h", "password": "hunter2"})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"host": ""}, "at least 1 character"),
        ({"host": "h", "port": 0}, "greater than or equal to 1"),
        ({"host": "h", "tls": "ssl"}, "'starttls', 'implicit' or 'none'"),
        ({"host": "h", "username": "u"}, "username and password_env go together"),
        ({"host": "h", "password_env": "SMTP_PASSWORD"}, "go together"),
        ({"host": "h", "connections": 0}, "greater than or equal to 1"),
        ({"host": "h", "timeout": "soon"}, "not a duration"),
    ],
)
def test_smtp_settings_errors(raw: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        SmtpSettings.model_validate(raw)


def test_a_password_pasted_as_the_variable_name_is_not_echoed() -> None:
    with pytest.raises(ValidationError) as info:
        SmtpSettings(host="h", username="u", password_env="p@ss w0rd!")
    assert "p@ss w0rd!" not in str(info.value)
    assert "NAME of an environment variable" in str(info.value)


def test_missing_password_variable_names_the_key_and_the_variable() -> None:
    settings = SmtpSettings(host="h", username="mailer", password_env="SMTP_PASSWORD")
    with pytest.raises(ConfigError) as info:
        SmtpProvider(settings, {}, config_key="providers.smtp")
    text = str(info.value)
    assert text.startswith("providers.smtp.password_env:")
    assert "SMTP_PASSWORD" in text


def test_the_password_is_in_no_repr() -> None:
    settings = SmtpSettings(host="h", username="mailer", password_env="SMTP_PASSWORD")
    provider = SmtpProvider(settings, {"SMTP_PASSWORD": "s3cret-value"})
    assert provider.name == "smtp"
    assert "s3cret-value" not in repr(provider)
    assert "s3cret-value" not in repr(vars(provider))
    assert "s3cret-value" not in repr(settings)


def test_outbox_settings(tmp_path: Path) -> None:
    assert OutboxSettings().directory == Path(".demo/outbox")
    provider = OutboxProvider(OutboxSettings(directory=tmp_path / "out"))
    assert provider.name == "outbox"
    assert provider.directory == tmp_path / "out"
    with pytest.raises(ValidationError, match="Extra inputs"):
        OutboxSettings.model_validate({"dir": "x"})
