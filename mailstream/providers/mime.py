"""Build the MIME email every SMTP-speaking provider sends, from a rendered Message."""

from __future__ import annotations

import email.policy
import email.utils
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from hashlib import blake2b

from mailstream.providers.base import Message

# Set from the Message's own fields; a header in Message.headers may not replace them.
_STRUCTURAL = frozenset(
    name.casefold()
    for name in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "Sender",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    )
)
# RFC 5322 field names: printable US-ASCII except the colon.
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
_FOLD_AT = 78  # where a long ASCII header value is wrapped, at a ", " between items
_MAX_LINE = 998  # RFC 5322's hard limit on a line, without the CRLF

# 7bit: non-ASCII bodies are quoted-printable or base64, so any server takes them.
# refold_source "none": the extra ASCII headers are stored as written (folded by _fold);
# the stock policy would re-encode a long List-Unsubscribe as RFC 2047 words, which
# mailbox providers do not decode and so would not offer one-click unsubscribe.
POLICY = email.policy.SMTP.clone(cte_type="7bit", refold_source="none")


def message_id_for(send_id: str, domain: str) -> str:
    """The Message-ID of a send: the same send id always gives the same id."""
    return f"<{send_id}@{domain}>"


def build_mime(message: Message, *, date: datetime | None = None) -> EmailMessage:
    """The multipart/alternative (text, then HTML) email for ``message``.

    ``date`` is the Date header (timezone-aware; default: now). Raises ValueError when
    a header name or value would break the header block (CR or LF in it). Serialise
    with ``mime_bytes`` (or ``as_bytes()``), not with another policy, which would
    re-encode the long extra headers.
    """
    when = datetime.now(UTC) if date is None else date
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"send {message.send_id}: the Date must be timezone-aware")
    own: list[tuple[str, str]] = [
        ("From", message.from_address),
        ("To", message.to),
        ("Subject", message.subject),
        ("Date", email.utils.format_datetime(when)),
        ("Message-ID", message.message_id),
    ]
    if message.reply_to:
        own.append(("Reply-To", message.reply_to))
    for name in message.headers:
        if not _FIELD_NAME.match(name):
            raise ValueError(
                f"send {message.send_id}: header name {name!r} is not a valid field name"
            )
        if name.casefold() in _STRUCTURAL:
            raise ValueError(
                f"send {message.send_id}: header {name} is set from the message itself "
                "and may not be given in headers"
            )
    for name, value in [*own, *message.headers.items()]:
        if "\r" in value or "\n" in value:
            raise ValueError(
                f"send {message.send_id}: header {name} contains a line break (CR or LF); "
                "refusing to build a message whose headers could be injected"
            )

    msg = EmailMessage(policy=POLICY)
    for name, value in own:
        msg[name] = value
    for name, value in message.headers.items():
        if value.isascii():
            msg.set_raw(name, _fold(message.send_id, name, value))
        else:  # free text, e.g. a display name: RFC 2047 encoded words
            msg[name] = value
    msg.set_content(message.text, subtype="plain", charset="utf-8")
    msg.add_alternative(message.html, subtype="html", charset="utf-8")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # belongs on the top level only
    # A boundary derived from the content keeps the bytes of a resend identical.
    digest = blake2b(
        "\x1f".join((message.send_id, message.text, message.html)).encode(), digest_size=16
    ).hexdigest()
    msg.set_boundary(f"=_ms_{digest}")
    return msg


def mime_bytes(msg: EmailMessage, *, utf8: bool = False) -> bytes:
    """The wire form (CRLF line ends) of a message from build_mime.

    ``utf8``: write non-ASCII headers as raw UTF-8 (for an SMTPUTF8 transaction).
    """
    return msg.as_bytes(policy=POLICY.clone(utf8=True) if utf8 else POLICY)


def _fold(send_id: str, name: str, value: str) -> str:
    """Wrap a long ASCII value between its comma-separated items, never inside one."""
    lines: list[str] = []
    line = f"{name}: "
    for n, item in enumerate(value.split(", ")):
        piece = item if n == 0 else f", {item}"
        if n > 0 and len(line) + len(piece) > _FOLD_AT:
            lines.append(line + ",")
            line = f" {item}"
        else:
            line += piece
    lines.append(line)
    if any(len(x) > _MAX_LINE for x in lines):
        raise ValueError(
            f"send {send_id}: header {name} has an item longer than {_MAX_LINE} characters"
        )
    return "\n".join(lines)[len(name) + 2 :]
