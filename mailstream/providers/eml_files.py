"""Write each message as an .eml file instead of sending it: the demo's provider."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mailstream.providers.base import Accepted, Message, SendFailure
from mailstream.providers.mime import build_mime, mime_bytes

logger = logging.getLogger(__name__)

# send ids become file names: no separators, no leading dot
_SAFE_SEND_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")


class OutboxSettings(BaseModel):
    """Where the ``outbox`` provider writes (relative paths: from the working directory)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Path(".demo/outbox")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OutboxProvider:
    """The ``outbox`` provider: ``<directory>/<YYYYMMDD>/<send_id>.eml``, one per send.

    The day is the UTC date of the write. A send written again (a retry, a replay)
    replaces its file that day; a reader never sees a half-written file.
    """

    name = "outbox"

    def __init__(
        self, settings: OutboxSettings, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.settings = settings
        self.directory = settings.directory.absolute()
        self._clock = clock

    def __repr__(self) -> str:
        return f"OutboxProvider(directory={str(self.directory)!r})"

    async def start(self) -> None:
        """Nothing to open; the directory is created on the first write."""

    async def send(self, message: Message) -> Accepted:
        if not _SAFE_SEND_ID.match(message.send_id):
            raise SendFailure(
                "outbox_send_id",
                f"send id {message.send_id!r} cannot be a file name "
                "(letters, digits, '.', '_', '-'; not starting with '.')",
                retryable=False,
            )
        now = self._clock()
        try:
            data = mime_bytes(build_mime(message, date=now))
        except ValueError as exc:
            raise SendFailure("invalid_message", str(exc), retryable=False) from None
        path = self.directory / now.astimezone(UTC).strftime("%Y%m%d") / f"{message.send_id}.eml"
        try:
            await asyncio.to_thread(_write_atomically, path, data)
        except OSError as exc:
            raise SendFailure(
                "outbox_io",
                f"cannot write {path}: {exc.strerror or exc}; check that {self.directory} "
                "(the outbox provider's `directory` setting) can be created and written",
                retryable=False,
            ) from None
        logger.debug("outbox: wrote %s", path)
        return Accepted(provider_message_id=message.message_id)

    async def close(self) -> None:
        """Nothing to close: every write is finished before send returns."""


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # No fsync: a demo outbox needs whole files for its readers, not durability
        # across a power cut.
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
