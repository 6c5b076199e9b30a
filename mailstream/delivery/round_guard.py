"""What a dispatcher loop does after a round raised: back off, try again, or give up the
one command it was handling.

A dispatcher (email delivery, webhook calls) runs rounds: record finished calls, take
the next ones. A round that raises is not the end of the loop: it waits a little
(exponential, capped) and runs again. Most errors belong to no command (the broker did
not acknowledge a flush) and heal by themselves. An error raised while one command was
being handled is held against that command; when the same command has made that many
rounds raise, it is given up (dead-lettered with the reason) so that it cannot hold the
queue forever.

Pure: the caller says what failed and which command it was handling, if any.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

# Rounds a command may make raise before it is dead-lettered.
GIVE_UP_AFTER = 3
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 5.0
# Commands with strikes remembered at most; the oldest are forgotten first.
SUSPECTS_KEPT = 1000


@dataclass(frozen=True, slots=True)
class ErrorPolicy:
    give_up_after: int = GIVE_UP_AFTER
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S
    suspects_kept: int = SUSPECTS_KEPT


@dataclass(frozen=True, slots=True)
class AfterError:
    """The decision after a round raised."""

    backoff_s: float  # wait this long before the next round
    give_up: bool  # dead-letter the command that was being handled
    strikes: int  # rounds that command has made raise (0: no command to blame)
    in_a_row: int  # rounds in a row that raised, this one included


def backoff(in_a_row: int, policy: ErrorPolicy) -> float:
    """``base``, ``2 * base``, ``4 * base``, ... up to ``max`` for the n-th error in a row."""
    if in_a_row <= 0:
        return 0.0
    return float(min(policy.backoff_max_s, policy.backoff_base_s * 2 ** min(in_a_row - 1, 32)))


@dataclass
class ErrorTracker:
    """Errors in a row and the strikes held against each command; no clock."""

    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    in_a_row: int = 0
    strikes: dict[Hashable, int] = field(default_factory=dict)

    def failed(self, suspect: Hashable | None) -> AfterError:
        """A round raised while handling ``suspect`` (None: no command in hand)."""
        self.in_a_row += 1
        count = 0
        if suspect is not None:
            count = self.strikes.pop(suspect, 0) + 1
            self.strikes[suspect] = count  # re-inserted: the most recent last
            while len(self.strikes) > self.policy.suspects_kept:
                del self.strikes[next(iter(self.strikes))]
        give_up = suspect is not None and count >= self.policy.give_up_after
        return AfterError(backoff(self.in_a_row, self.policy), give_up, count, self.in_a_row)

    def succeeded(self) -> None:
        """A round ran through: the next error starts the backoff again. Strikes stay: a
        command that raises only when it is reached must still be given up."""
        self.in_a_row = 0

    def forget(self, suspect: Hashable) -> None:
        """The command was given up (or finished): its strikes no longer matter."""
        self.strikes.pop(suspect, None)
