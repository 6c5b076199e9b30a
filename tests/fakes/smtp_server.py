"""A local SMTP server for tests: records what it accepts, refuses what it is told to.

In a test::

    with FakeSmtpServer() as smtp:                      # 127.0.0.1, a free port
        smtp.script("slow@x.test", [421, 421, 250])     # two refusals, then accept
        ... SmtpSettings(host=smtp.host, port=smtp.port, tls="none") ...
        [received] = smtp.wait_for(1)                    # or: await smtp.until(1)
        assert received.message_id == "<id@x.test>"

It runs aiosmtpd in a thread of the test process, so worker subprocesses can send to
it as well. ``python -m tests.fakes.smtp_server --port N`` runs one on its own and
prints a line per message.

No STARTTLS or implicit TLS (a certificate would need the ``cryptography`` package,
which the dev environment does not have): use ``tls="none"``. The provider's
``starttls`` and ``implicit`` modes are only aiosmtplib's own code paths.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailstream.kafka.embedded_broker import free_port

Stage = Literal["rcpt", "data"]

# What a scripted code answers with, unless the script gives the whole reply line.
REPLIES = {
    250: "250 2.1.5 OK",
    421: "421 4.7.0 Try again later, closing connection",
    450: "450 4.2.1 Mailbox temporarily unavailable",
    451: "451 4.3.0 Temporary local problem, try again later",
    452: "452 4.2.2 Insufficient system storage",
    454: "454 4.7.1 Relay access temporarily unavailable",
    550: "550 5.1.1 <{address}>: Recipient address rejected: User unknown",
    551: "551 5.1.6 User not local",
    552: "552 5.2.2 <{address}>: Mailbox full",
    553: "553 5.1.3 Bad recipient address syntax",
    554: "554 5.7.1 <{address}>: Relay access denied",
}


@dataclass(frozen=True)
class Received:
    """One accepted message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage  # parsed with email.policy.default
    arrived_at: float  # time.time() when DATA completed
    connection: int  # which connection (1, 2, ... in order of opening) carried it

    @property
    def headers(self) -> dict[str, str]:
        """Decoded header values by name (the first of a repeated header)."""
        out: dict[str, str] = {}
        for name, value in self.message.items():
            out.setdefault(name, str(value))
        return out

    def header(self, name: str) -> str | None:
        """One header's decoded value, by case-insensitive name."""
        value = self.message.get(name)
        return None if value is None else str(value)

    @property
    def message_id(self) -> str | None:
        return self.header("Message-ID")

    @property
    def subject(self) -> str | None:
        return self.header("Subject")

    @property
    def text(self) -> str | None:
        """The text/plain body, with "\\n" line ends."""
        return _body(self.message, "plain")

    @property
    def html(self) -> str | None:
        return _body(self.message, "html")


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # as written, not as sent


class FakeSmtpServer:
    """An SMTP server on ``host``:``port`` (default: 127.0.0.1, a free port).

    With ``username`` and ``password`` it offers AUTH PLAIN and LOGIN without TLS and
    answers MAIL with 530 until the client has logged in.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.username = username
        self.password = password
        self._lock = threading.Condition()
        self._messages: list[Received] = []
        self._scripts: dict[tuple[Stage, str], deque[str]] = defaultdict(deque)
        self._live: set[SMTP] = set()
        self._connections = 0
        self._auth_ok = 0
        self._auth_failed = 0
        self._controller: _Controller | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeSmtpServer:
        kwargs: dict[str, Any] = {}
        if self.username is not None:
            # auth_required would warn (no TLS); handle_MAIL enforces it instead
            kwargs = {"auth_require_tls": False, "authenticator": self._authenticate}
        self._controller = _Controller(self, **kwargs)
        self._controller.start()
        with self._lock:
            self._connections = 0  # the controller's own readiness probe
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> FakeSmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting --------------------------------------------------------------------

    def script(self, recipient: str, replies: Iterable[int | str], at: Stage = "rcpt") -> None:
        """Answer the next transactions to ``recipient`` with ``replies``, in order.

        Each is a code (with a realistic text from REPLIES) or a whole reply line such
        as ``"550 5.7.1 Message rejected"``; 250 accepts. Once the replies run out,
        every transaction is accepted. ``at="data"`` answers the end of DATA instead of
        RCPT TO. A 421 also closes the connection, as real servers do.
        """
        lines = []
        for reply in replies:
            if isinstance(reply, int):
                reply = REPLIES.get(reply, f"{reply} Scripted reply")
            lines.append(reply.format(address=recipient))
        with self._lock:
            self._scripts[(at, recipient.lower())].extend(lines)

    def disconnect_all(self) -> None:
        """Close every client connection from the server side (an idle-timeout drop)."""
        controller = self._controller
        if controller is None:
            return
        done = threading.Event()

        def close() -> None:
            for server in list(self._live):
                if server.transport is not None:
                    server.transport.close()
            done.set()

        controller.loop.call_soon_threadsafe(close)
        done.wait(5)

    def clear(self) -> None:
        """Forget the messages, counters and scripts so far."""
        with self._lock:
            self._messages.clear()
            self._scripts.clear()
            self._connections = self._auth_ok = self._auth_failed = 0

    # -- what happened ----------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """Connections clients opened since start (or clear)."""
        with self._lock:
            return self._connections

    @property
    def logins(self) -> tuple[int, int]:
        """(successful, failed) AUTH attempts."""
        with self._lock:
            return self._auth_ok, self._auth_failed

    def by_message_id(self, message_id: str) -> list[Received]:
        return [m for m in self.messages if m.message_id == message_id]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least ``count`` messages arrived; all of them. Not in async
        code: there use ``until``."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                raise AssertionError(
                    f"fake SMTP: {len(self._messages)} messages after {timeout}s, expected {count}"
                )
            return list(self._messages)

    async def until(self, count: int, timeout: float = 5.0) -> list[Received]:
        """``wait_for`` for async tests: polls without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages
            if len(messages) >= count:
                return messages
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"fake SMTP: {len(messages)} messages after {timeout}s, expected {count}"
                )
            await asyncio.sleep(0.02)

    # -- the server side (runs on the controller's thread) ----------------------------

    def _opened(self, server: SMTP) -> int:
        with self._lock:
            self._connections += 1
            self._live.add(server)
            return self._connections

    def _closed(self, server: SMTP) -> None:
        with self._lock:
            self._live.discard(server)

    def _scripted(self, stage: Stage, address: str) -> str | None:
        with self._lock:
            queue = self._scripts.get((stage, address.lower()))
            return queue.popleft() if queue else None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            mechanism in ("PLAIN", "LOGIN")
            and isinstance(data, LoginPassword)
            and data.login.decode() == self.username
            and data.password.decode() == self.password
        )
        with self._lock:
            if ok:
                self._auth_ok += 1
            else:
                self._auth_failed += 1
        # handled=False: aiosmtpd answers (235, or 535 5.7.8 on a failure)
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._scripted("rcpt", address)
        if reply is not None and not reply.startswith("2"):
            return _closing(server, reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return reply or REPLIES[250]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for address in envelope.rcpt_tos:
            reply = self._scripted("data", address)
            if reply is not None and not reply.startswith("2"):
                return _closing(server, reply)
        raw = envelope.original_content or b""
        parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=raw,
            message=parsed,
            arrived_at=time.time(),
            connection=getattr(server, "number", 0),
        )
        with self._lock:
            self._messages.append(received)
            self._lock.notify_all()
        return f"250 2.0.0 OK: queued as {len(self._messages)}"


def _closing(server: SMTP, reply: str) -> str:
    if reply.startswith("421"):
        # after the reply is written (call_soon runs once this hook has returned)
        transport = server.transport
        if transport is not None:
            server.loop.call_soon(transport.close)
    return reply


class _CountingSMTP(SMTP):
    def __init__(self, fake: FakeSmtpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fake = fake
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.number = self.fake._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.fake._closed(self)
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, fake: FakeSmtpServer, **smtp_kwargs: Any) -> None:
        # a fixed name: the default looks this host up in DNS on every connection
        super().__init__(
            fake,
            hostname=fake.host,
            port=fake.port,
            server_hostname="fake-smtp.test",
            **smtp_kwargs,
        )
        self.fake = fake

    def factory(self) -> SMTP:
        return _CountingSMTP(self.fake, self.handler, **self.SMTP_kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--username")
    parser.add_argument("--password")
    args = parser.parse_args()
    server = FakeSmtpServer(
        host=args.host, port=args.port, username=args.username, password=args.password
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with server:
        print(f"fake SMTP listening on {server.host}:{server.port}", flush=True)
        seen = 0
        while not stop.wait(0.2):
            messages = server.messages
            for m in messages[seen:]:
                print(f"{m.arrived_at:.3f} {m.message_id} {','.join(m.rcpt_tos)}", flush=True)
            seen = len(messages)


if __name__ == "__main__":
    main()
