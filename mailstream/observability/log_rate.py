"""Repeated client errors logged at a bounded rate: the first of a kind, then one summary
per interval with the count of those left out.

Without the broker, aiokafka logs each failed connection, metadata update and fetch of
every client, hundreds of lines a second; one of each kind says as much.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

# the loggers whose repeats are held back (and their children)
LIMITED = ("aiokafka", "faust")
REPEAT_INTERVAL = 30.0
# kinds remembered at most; past that, the oldest are forgotten
MAX_KINDS = 1000

_NUMBERS = re.compile(r"\d+")


@dataclass
class _Kind:
    window_start: float
    suppressed: int = 0
    level: int = logging.WARNING
    name: str = ""
    example: str = ""


class RepeatFilter(logging.Filter):
    """A handler filter: records of the ``LIMITED`` loggers pass once per ``interval`` per
    kind (warnings and errors: logger and message template, numbers aside; information:
    the same words); the others of that interval are counted, and ``summaries`` (or the
    next of the kind after the interval) says how many were left out."""

    def __init__(
        self,
        interval: float = REPEAT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        prefixes: tuple[str, ...] = LIMITED,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.prefixes = prefixes
        self._kinds: dict[tuple[str, int, str], _Kind] = {}

    def _limited(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return False
        return any(record.name == p or record.name.startswith(p + ".") for p in self.prefixes)

    @staticmethod
    def _kind(record: logging.LogRecord) -> str:
        if record.levelno < logging.WARNING:
            # information repeats only word for word (Faust's consumer lists its topics
            # again at every retry): "opening partition 3" is not "opening partition 4"
            return record.getMessage()[:300]
        template = record.msg if isinstance(record.msg, str) else repr(record.msg)
        return _NUMBERS.sub("#", template)[:200]

    def filter(self, record: logging.LogRecord) -> bool:
        # one verdict per record, however many handlers share this filter
        verdict = record.__dict__.get("repeat_verdict")
        if verdict is None:
            verdict = record.__dict__["repeat_verdict"] = self._verdict(record)
        return bool(verdict)

    def _verdict(self, record: logging.LogRecord) -> bool:
        if not self._limited(record) or record.__dict__.get("repeat_summary"):
            return True
        key = (record.name, record.levelno, self._kind(record))
        now = self.clock()
        kind = self._kinds.get(key)
        if kind is None:
            if len(self._kinds) >= MAX_KINDS:
                del self._kinds[next(iter(self._kinds))]
            self._kinds[key] = _Kind(now, level=record.levelno, name=record.name)
            return True
        if now - kind.window_start < self.interval:
            kind.suppressed += 1
            kind.example = record.getMessage()
            return False
        if kind.suppressed:
            record.msg = f"{record.msg} ({_left_out(kind.suppressed, now - kind.window_start)})"
        kind.window_start, kind.suppressed = now, 0
        return True

    def summaries(self) -> list[tuple[str, int, str]]:
        """(logger name, level, line) for each kind of warning or error whose interval is
        over with repeats left out and none logged since: the count, with the last of
        them. (Repeated information is counted with the next of its kind.)"""
        now = self.clock()
        lines = []
        for kind in self._kinds.values():
            if (
                kind.suppressed
                and kind.level >= logging.WARNING
                and now - kind.window_start >= self.interval
            ):
                left_out = _left_out(kind.suppressed, now - kind.window_start)
                lines.append((kind.name, kind.level, f"{kind.example} ({left_out})"))
                kind.window_start, kind.suppressed = now, 0
        return lines


def _left_out(count: int, seconds: float) -> str:
    return f"{count} more like it in the last {seconds:.0f} s, not logged"


def install(handlers: list[logging.Handler]) -> RepeatFilter:
    """Add one ``RepeatFilter`` to each of ``handlers`` (the root logger's); return it."""
    repeat = RepeatFilter()
    for handler in handlers:
        handler.addFilter(repeat)
    return repeat


def log_summaries(repeat: RepeatFilter) -> None:
    """Log the summaries due, each on its own logger (the filter lets them through)."""
    for name, level, line in repeat.summaries():
        logging.getLogger(name).log(level, "%s", line, extra={"repeat_summary": True})
