"""A worker paused past its group session stops at once when it wakes.

A worker whose process did not run for longer than its group session (frozen by
SIGSTOP, a paused VM, a machine too starved to schedule it) has been dropped from the
group, and its partitions given to other workers, which went on from the last state it
made durable. When it wakes it still holds the old assignment, its local tables and its
queued sends, and until its next heartbeat is answered nothing tells it otherwise: acting
on them would send again what another worker has sent and fire timers another worker has
fired. Rejoining in-process did not cure it: a worker that got back a partition it had
before the pause went on from its own stale tables, not from what the other worker wrote
meanwhile, and sent those sends again. So it exits
(``EXIT_PAUSED``) with one line saying why, and its supervisor starts it again: a
restarted worker reads every changelog from the offset its local state reflects.

``Membership`` is pure (the caller passes the monotonic time); ``keep_ticking`` runs it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TICK_EVERY = 0.1  # how often the worker notes that it runs
EXIT_PAUSED = 3  # mailstream.kafka.broker_watch has 1 and 2


@dataclass
class Membership:
    """``limit``: a pause longer than this means the group has dropped the worker (its
    session less one heartbeat interval: the last heartbeat may have gone that much
    before the pause). ``lapsed(message)`` is called once such a pause is seen."""

    limit: float
    lapsed: Callable[[str], None]
    last_tick: float | None = None

    @classmethod
    def for_session(
        cls, session_timeout: float, heartbeat_interval: float, lapsed: Callable[[str], None]
    ) -> Membership:
        return cls(max(1.0, session_timeout - heartbeat_interval), lapsed)

    def tick(self, now: float) -> None:
        """The worker ran at ``now``."""
        self.check(now)
        self.last_tick = now

    def check(self, now: float) -> None:
        """Before acting on the assignment: calls ``lapsed`` if the worker was paused for
        longer than ``limit`` since the last tick."""
        if self.last_tick is None or now - self.last_tick <= self.limit:
            return
        paused, self.last_tick = now - self.last_tick, None
        self.lapsed(
            f"this worker did not run for {paused:.1f} s, longer than its group session"
            f" allows ({self.limit:g} s): its partitions were given to other workers."
            f" Exiting ({EXIT_PAUSED}) so that a restart rebuilds its state from the changelogs"
        )


def exit_paused(message: str) -> None:
    """Say why on stderr and in the log, and exit at once: nothing the worker had in hand
    may go on, and neither may Faust's shutdown, which would flush and commit it."""
    logger.error(message)
    print(f"mailstream: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_PAUSED)


def keep_ticking(membership: Membership) -> threading.Thread:
    """Tick ``membership`` from a thread of its own: a busy event loop does not stop the
    consumer's heartbeats (Faust runs the consumer in a thread), so only a pause of the
    whole process counts."""

    def run() -> None:
        while True:
            membership.tick(time.monotonic())
            time.sleep(TICK_EVERY)

    thread = threading.Thread(target=run, name="mailstream-membership", daemon=True)
    thread.start()
    return thread
