"""The smtp provider against a local SMTP server, and the outbox provider on disk."""

from __future__ import annotations

import asyncio
import dataclasses
import email.policy
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from mailstream.kafka.embedded_broker import free_port
from mailstream.providers.base import Accepted, Message, SendFailure
from mailstream.providers.eml_files import OutboxProvider, OutboxSettings
from mailstream.providers.smtp import SmtpProvider, SmtpSettings
from tests.fakes.smtp_server import FakeSmtpServer

pytestmark = pytest.mark.timeout(30)

WHEN = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
PASSWORD = "correct horse battery staple"


def message(n: int = 1, **changes: Any) -> Message:
    send_id = f"{n:032x}"
    base = Message(
        send_id=send_id,
        message_id=f"<{send_id}@mail.shop.test>",
        from_address="Shop <news@shop.test>",
        to="ada@example.test",
        subject="Grüße, Ada",
        text="Hello Ada,\nyour cart is waiting.\n",
        html="<p>Hello Ada,</p>\n<p>your cart is waiting.</p>\n",
        category="marketing",
        tenant_id="default",
        user_id="u-42",
        headers={
            "X-Mailstream-Send-Id": send_id,
            "X-Mailstream-User-Id": "u-42",
            "List-Unsubscribe": f"<https://shop.test/unsubscribe/{send_id}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def smtp() -> Iterator[FakeSmtpServer]:
    with FakeSmtpServer() as server:
        yield server


def settings(server: FakeSmtpServer, **changes: Any) -> SmtpSettings:
    return SmtpSettings(
        host=server.host,
        port=server.port,
        tls="none",
        timeout=2,
        local_hostname="worker.test",
        **changes,
    )


@pytest.fixture
async def provider(smtp: FakeSmtpServer) -> AsyncIterator[SmtpProvider]:
    p = SmtpProvider(settings(smtp), {}, clock=lambda: WHEN)
    await p.start()
    yield p
    await p.close()


async def refused(provider: SmtpProvider | OutboxProvider, msg: Message) -> SendFailure:
    with pytest.raises(SendFailure) as info:
        await provider.send(msg)
    return info.value


# -- smtp --------------------------------------------------------------------------------


async def test_delivers_with_headers_and_message_id(
    smtp: FakeSmtpServer, provider: SmtpProvider
) -> None:
    msg = message(reply_to="help@shop.test")
    accepted = await provider.send(msg)

    assert accepted == Accepted(provider_message_id=msg.message_id)
    [got] = smtp.messages
    assert got.mail_from == "news@shop.test"
    assert got.rcpt_tos == ("ada@example.test",)
    assert got.message_id == msg.message_id
    assert got.headers == {
        "From": "Shop <news@shop.test>",
        "To": "ada@example.test",
        "Subject": "Grüße, Ada",
        "Date": "Wed, 01 May 2024 09:30:00 +0000",
        "Message-ID": msg.message_id,
        "Reply-To": "help@shop.test",
        "X-Mailstream-Send-Id": msg.send_id,
        "X-Mailstream-User-Id": "u-42",
        "List-Unsubscribe": f"<https://shop.test/unsubscribe/{msg.send_id}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "MIME-Version": "1.0",
        "Content-Type": got.headers["Content-Type"],
    }
    assert got.message.get_content_type() == "multipart/alternative"
    assert got.text == msg.text
    assert got.html == msg.html


async def test_one_connection_carries_twenty_sends(
    smtp: FakeSmtpServer, provider: SmtpProvider
) -> None:
    for n in range(10):
        await provider.send(message(n))
    await asyncio.gather(*(provider.send(message(n)) for n in range(10, 20)))

    assert len(smtp.messages) == 20
    assert smtp.connections == 1
    assert {m.connection for m in smtp.messages} == {1}


async def test_a_small_pool_spreads_concurrent_sends(smtp: FakeSmtpServer) -> None:
    provider = SmtpProvider(settings(smtp, connections=3), {})
    try:
        await asyncio.gather(*(provider.send(message(n)) for n in range(30)))
    finally:
        await provider.close()

    assert len({m.message_id for m in smtp.messages}) == 30
    assert 1 <= smtp.connections <= 3


async def test_reconnects_after_the_server_drops_the_connection(
    smtp: FakeSmtpServer, provider: SmtpProvider
) -> None:
    await provider.send(message(1))
    smtp.disconnect_all()
    await provider.send(message(2))  # may not have noticed the drop yet: retried once
    await asyncio.sleep(0.05)
    smtp.disconnect_all()
    await asyncio.sleep(0.05)
    await provider.send(message(3))  # noticed: connects before sending

    assert [m.connection for m in smtp.messages] == [1, 2, 3]


async def test_auth_success() -> None:
    with FakeSmtpServer(username="mailer", password=PASSWORD) as server:
        provider = SmtpProvider(
            settings(server, username="mailer", password_env="SMTP_PASSWORD"),
            {"SMTP_PASSWORD": PASSWORD},
        )
        try:
            await provider.send(message(1))
            await provider.send(message(2))
        finally:
            await provider.close()

        assert len(server.messages) == 2
        assert server.logins == (1, 0)  # once per connection


async def test_auth_failure_is_permanent_and_never_shows_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password-4711"
    with FakeSmtpServer(username="mailer", password=PASSWORD) as server:
        provider = SmtpProvider(
            settings(server, username="mailer", password_env="SMTP_PASSWORD"),
            {"SMTP_PASSWORD": wrong},
        )
        try:
            failure = await refused(provider, message())
        finally:
            await provider.close()

        assert failure.code == "smtp_535"
        assert not failure.retryable
        assert not failure.invalid_recipient
        assert server.messages == []
        assert server.logins[1] >= 1
    for text in (str(failure), repr(failure), failure.message, caplog.text, repr(provider)):
        assert wrong not in text


async def test_no_login_where_one_is_required_is_permanent() -> None:
    with FakeSmtpServer(username="mailer", password=PASSWORD) as server:
        provider = SmtpProvider(settings(server), {})
        try:
            failure = await refused(provider, message())
        finally:
            await provider.close()
    assert (failure.code, failure.retryable) == ("smtp_530", False)


async def test_421_is_retryable_and_a_later_attempt_delivers(
    smtp: FakeSmtpServer, provider: SmtpProvider
) -> None:
    smtp.script("slow@example.test", [421, 421, 250])
    msg = message(to="slow@example.test")

    for _ in range(2):
        failure = await refused(provider, msg)
        assert (failure.code, failure.retryable, failure.invalid_recipient) == (
            "smtp_421",
            True,
            False,
        )
    await provider.send(msg)

    assert [m.message_id for m in smtp.messages] == [msg.message_id]
    assert smtp.connections == 3  # a 421 closes the connection


@pytest.mark.parametrize(
    ("reply", "code", "retryable", "invalid"),
    [
        (451, "smtp_451", True, False),
        (454, "smtp_454", True, False),
        (452, "smtp_452", True, False),
        (550, "smtp_550", False, True),
        (552, "smtp_552", False, False),
        (554, "smtp_554", False, False),
        ("553 5.1.3 Bad recipient address syntax", "smtp_553", False, True),
    ],
)
async def test_recipient_refusals(
    smtp: FakeSmtpServer,
    provider: SmtpProvider,
    reply: int | str,
    code: str,
    retryable: bool,
    invalid: bool,
) -> None:
    smtp.script("bob@example.test", [reply])

    failure = await refused(provider, message(to="bob@example.test"))

    assert (failure.code, failure.retryable, failure.invalid_recipient) == (
        code,
        retryable,
        invalid,
    )
    # the connection is still good for the next message
    await provider.send(message(2))
    assert smtp.connections == 1
    assert len(smtp.messages) == 1


async def test_refusal_after_data_does_not_blame_the_address(
    smtp: FakeSmtpServer, provider: SmtpProvider
) -> None:
    smtp.script("ada@example.test", ["554 5.7.1 Message rejected as spam"], at="data")

    failure = await refused(provider, message())

    assert (failure.code, failure.retryable, failure.invalid_recipient) == (
        "smtp_554",
        False,
        False,
    )


async def test_server_down_is_a_retryable_connection_failure() -> None:
    settings_ = SmtpSettings(host="127.0.0.1", port=free_port(), tls="none", timeout=2)
    provider = SmtpProvider(settings_, {})

    failure = await refused(provider, message())

    assert (failure.code, failure.retryable) == ("connection", True)
    await provider.close()


async def test_a_silent_server_is_a_retryable_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # and never greet

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = SmtpProvider(SmtpSettings(host="127.0.0.1", port=port, tls="none", timeout=0.3), {})
    try:
        failure = await refused(provider, message())
    finally:
        await provider.close()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()

    assert (failure.code, failure.retryable) == ("timeout", True)
    assert len(accepted) == 1


# -- outbox ------------------------------------------------------------------------------


def parse(path: Path) -> EmailMessage:
    parsed = BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


async def test_outbox_writes_a_parseable_eml(tmp_path: Path) -> None:
    provider = OutboxProvider(OutboxSettings(directory=tmp_path / "outbox"), clock=lambda: WHEN)
    msg = message()

    accepted = await provider.send(msg)

    path = tmp_path / "outbox" / "20240501" / f"{msg.send_id}.eml"
    assert accepted == Accepted(provider_message_id=msg.message_id)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    parsed = parse(path)
    assert parsed["Message-ID"] == msg.message_id
    assert parsed["Subject"] == "Grüße, Ada"
    assert parsed["To"] == "ada@example.test"
    assert parsed["X-Mailstream-Send-Id"] == msg.send_id
    assert parsed["List-Unsubscribe"] == msg.headers["List-Unsubscribe"]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


async def test_outbox_overwrites_a_repeated_send(tmp_path: Path) -> None:
    provider = OutboxProvider(OutboxSettings(directory=tmp_path), clock=lambda: WHEN)

    await provider.send(message(7, subject="first"))
    await provider.send(message(7, subject="second"))

    files = list(tmp_path.rglob("*"))
    assert [p.name for p in files if p.is_file()] == [f"{7:032x}.eml"]
    assert parse(tmp_path / "20240501" / f"{7:032x}.eml")["Subject"] == "second"


async def test_outbox_relative_directory_is_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    provider = OutboxProvider(OutboxSettings(), clock=lambda: WHEN)

    await provider.send(message(3))

    assert (tmp_path / ".demo" / "outbox" / "20240501" / f"{3:032x}.eml").is_file()


async def test_outbox_unwritable_directory_is_permanent(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the outbox should be")
    provider = OutboxProvider(OutboxSettings(directory=blocker), clock=lambda: WHEN)

    failure = await refused(provider, message())

    assert (failure.code, failure.retryable) == ("outbox_io", False)
    assert str(blocker) in failure.message


async def test_outbox_refuses_a_send_id_that_is_not_a_file_name(tmp_path: Path) -> None:
    provider = OutboxProvider(OutboxSettings(directory=tmp_path), clock=lambda: WHEN)

    failure = await refused(provider, message(send_id="../escape"))

    assert (failure.code, failure.retryable) == ("outbox_send_id", False)
    assert list(tmp_path.iterdir()) == []
