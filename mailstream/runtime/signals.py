"""Turn SIGINT and SIGTERM into a flag, so long-running commands can stop cleanly."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """An Event that SIGINT or SIGTERM sets (instead of raising KeyboardInterrupt)."""
    stop = threading.Event()

    def _set(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _set)
    signal.signal(signal.SIGTERM, _set)
    return stop
