"""Send over SMTP (aiosmtplib), keeping a few connections open across sends."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Literal

import aiosmtplib
from aiosmtplib.email import parse_address
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from mailstream.config.durations import parse_duration
from mailstream.exceptions import ConfigError
from mailstream.providers.base import Accepted, Message, SendFailure
from mailstream.providers.mime import build_mime, mime_bytes

logger = logging.getLogger(__name__)

TlsMode = Literal["starttls", "implicit", "none"]
# Where in the transaction a reply came: only a refused RCPT (or a DATA reply with a
# 5.1.x code, there being one recipient) says something about the recipient's address.
Stage = Literal["connect", "auth", "mail", "rcpt", "data"]


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
        # not echoed: it may be the password, pasted where its variable's name belongs
        raise ValueError(
            "expected the NAME of an environment variable (letters, digits, _), "
            "e.g. SMTP_PASSWORD, never the password itself"
        )
    return value


class SmtpSettings(BaseModel):
    """How to reach the SMTP server (the ``smtp`` provider's config section)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    # starttls: upgrade a plain connection (port 587); implicit: TLS from the first
    # byte (port 465); none: plain text, for a local relay or a test server only
    tls: TlsMode = "starttls"
    username: str | None = Field(None, min_length=1)
    # the name of the environment variable that holds the password, never the password
    password_env: Annotated[str, AfterValidator(_env_name)] | None = None
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=300)] = 10.0
    # open connections kept for reuse; concurrent sends wait for a free one
    connections: int = Field(1, ge=1, le=64)
    # the name given in EHLO; default: this host's fully qualified name
    local_hostname: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]{1,253}$")

    @model_validator(mode="after")
    def _login_pair(self) -> SmtpSettings:
        if (self.username is None) != (self.password_env is None):
            raise ValueError(
                "username and password_env go together: set both to log in, "
                "or neither to send without AUTH"
            )
        return self


# "5.1.1", after the reply code if the message still starts with it.
_ENHANCED = re.compile(r"^\s*(?:\d{3}[ -])?([245])\.(\d{1,3})\.(\d{1,3})\b")
_BAD_MAILBOX_CODES = frozenset({550, 551, 553})


def classify_smtp(code: int, message: str, *, stage: Stage = "rcpt") -> SendFailure:
    """What an SMTP error reply means for this send.

    4xx: retryable. 5xx: permanent; invalid_recipient when a refused RCPT says the
    address is bad: an enhanced code 5.1.x, or without one 550, 551 or 553. A full
    mailbox (552, 5.2.2) or a policy refusal (5.7.x) is permanent but not the address.
    Anything else (a reply that should not have been an error) is retryable.
    """
    text = message.strip()
    failure_code = f"smtp_{code}"
    if not 500 <= code <= 599:
        return SendFailure(failure_code, text, retryable=True)
    enhanced = _ENHANCED.match(text)
    if enhanced is not None:
        bad_mailbox = enhanced.group(1) == "5" and enhanced.group(2) == "1"
        invalid = bad_mailbox and stage in ("rcpt", "data")
    else:
        invalid = code in _BAD_MAILBOX_CODES and stage == "rcpt"
    return SendFailure(failure_code, text, retryable=False, invalid_recipient=invalid)


def failure_from(exc: BaseException) -> SendFailure:
    """The SendFailure for what aiosmtplib (or the network under it) raised."""
    # Order matters: the timeout and response errors also subclass the connection ones.
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0]
        return classify_smtp(first.code, first.message, stage="rcpt")
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return classify_smtp(exc.code, exc.message, stage="rcpt")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return classify_smtp(exc.code, exc.message, stage="mail")
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return classify_smtp(exc.code, exc.message, stage="data")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return classify_smtp(exc.code, exc.message, stage="auth")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return classify_smtp(exc.code, exc.message, stage="connect")
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and asyncio's, both
        return SendFailure("timeout", str(exc) or "timed out", retryable=True)
    if isinstance(exc, OSError):  # ConnectionError, SMTPServerDisconnected, refused
        return SendFailure("connection", str(exc) or type(exc).__name__, retryable=True)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return SendFailure("smtp_not_supported", str(exc), retryable=False)
    # e.g. the server offers no AUTH mechanism we can use: a setup problem
    return SendFailure("smtp_error", str(exc) or type(exc).__name__, retryable=False)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Slot:
    """One connection, open or not yet (re)opened."""

    __slots__ = ("client",)

    def __init__(self) -> None:
        self.client: aiosmtplib.SMTP | None = None

    def drop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None


class SmtpProvider:
    """The ``smtp`` provider: one message per SMTP transaction on a reused connection."""

    name = "smtp"

    def __init__(
        self,
        settings: SmtpSettings,
        env: Mapping[str, str],
        *,
        clock: Callable[[], datetime] = _utcnow,
        config_key: str = "smtp",
    ) -> None:
        """``env`` supplies the password variable; ``config_key`` is where ``settings``
        sit in the config file, for error messages."""
        self.settings = settings
        self._clock = clock
        self._password: SecretStr | None = None
        if settings.password_env is not None:
            value = env.get(settings.password_env)
            if value is None:
                raise ConfigError(
                    f"{config_key}.password_env: the environment variable "
                    f"{settings.password_env} is not set; set it to the SMTP password "
                    f"of {settings.username}"
                )
            self._password = SecretStr(value)
        self._slots = [_Slot() for _ in range(settings.connections)]
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        for slot in self._slots:
            self._idle.put_nowait(slot)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"SmtpProvider(host={s.host!r}, port={s.port}, tls={s.tls!r}, "
            f"username={s.username!r}, connections={s.connections})"
        )

    async def start(self) -> None:
        """Nothing to do: connections open on the first send, so a server that is down
        at start delays nothing and fails only the sends (as retryable)."""

    async def send(self, message: Message) -> Accepted:
        try:
            recipient = parse_address(message.to)
        except ValueError as exc:
            raise SendFailure(
                "invalid_address", str(exc), retryable=False, invalid_recipient=True
            ) from None
        try:
            sender = parse_address(message.from_address)
            utf8 = not (sender + recipient).isascii()
            data = mime_bytes(build_mime(message, date=self._clock()), utf8=utf8)
        except ValueError as exc:
            raise SendFailure("invalid_message", str(exc), retryable=False) from None
        options = ["SMTPUTF8"] if utf8 else []

        slot = await self._idle.get()
        try:
            await self._transact(slot, sender, recipient, data, options)
        finally:
            self._idle.put_nowait(slot)
        logger.debug("smtp: %s accepted as %s", message.send_id, message.message_id)
        return Accepted(provider_message_id=message.message_id)

    async def close(self) -> None:
        """Wait for sends in flight (up to the timeout), then QUIT every connection."""
        held: list[_Slot] = []
        try:
            async with asyncio.timeout(self.settings.timeout):
                while len(held) < len(self._slots):
                    held.append(await self._idle.get())
        except TimeoutError:
            logger.warning("smtp: closing with sends still in flight")
        for slot in self._slots:
            client = slot.client
            if client is not None and client.is_connected:
                try:
                    await client.quit(timeout=min(self.settings.timeout, 2.0))
                except (aiosmtplib.SMTPException, OSError):
                    pass  # closing anyway
            slot.drop()
        for slot in held:
            self._idle.put_nowait(slot)

    async def _transact(
        self, slot: _Slot, sender: str, recipient: str, data: bytes, options: list[str]
    ) -> None:
        reused = slot.client is not None and slot.client.is_connected
        while True:
            try:
                client = await self._connected(slot)
                await client.sendmail(sender, [recipient], data, mail_options=options)
                return
            except aiosmtplib.SMTPServerDisconnected as exc:
                slot.drop()
                if not reused:
                    raise failure_from(exc) from None
                # Most often the server timed out an idle connection. Should it instead
                # have died after taking the message, the outcome is unknown either way
                # and the caller would retry too; one fresh connection, then give up.
                logger.info("smtp: connection to %s closed, reconnecting", self.settings.host)
                reused = False
            except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
                # The server answered (and aiosmtplib reset the envelope): the connection
                # stays usable, unless the answer was 421, after which aiosmtplib closed it.
                raise failure_from(exc) from None
            except (aiosmtplib.SMTPException, OSError) as exc:
                slot.drop()  # after a timeout or a broken pipe the session is out of step
                raise failure_from(exc) from None
            except BaseException:
                slot.drop()  # cancelled mid-transaction: never reuse that session
                raise

    async def _connected(self, slot: _Slot) -> aiosmtplib.SMTP:
        if slot.client is not None and slot.client.is_connected:
            return slot.client
        slot.drop()
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.tls == "implicit",
            start_tls=s.tls == "starttls",
            local_hostname=s.local_hostname,
        )
        try:
            await client.connect()
            if s.username is not None and self._password is not None:
                await client.login(s.username, self._password.get_secret_value())
        except BaseException:
            client.close()
            raise
        logger.info("smtp: connected to %s:%d (tls=%s)", s.host, s.port, s.tls)
        slot.client = client
        return client
