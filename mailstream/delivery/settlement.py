"""Settling a finished call, for both dispatchers (email delivery, webhook calls): the
record's next state, where its command waits if it is tried again, and what goes on the
dead-letter topic when it is not.

attempting --accepted---------------------------> SENT: off the queue
           --retryable, attempts left-----------> RETRY: queued again under requeue_key
           --not retryable----------------------> PERMANENT: off the queue, dead-lettered
           --retryable, but no attempts left----> EXHAUSTED: off the queue, dead-lettered

Pure: the caller passes the time (epoch ms), the answer and the jitter in.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailstream.delivery.dispatch_plan import DeadLetterNote
from mailstream.delivery.state_machine import Delivery, RetryPolicy, failed, succeeded
from mailstream.providers.base import Accepted, SendFailure

SENT = "sent"
RETRY = "retry"
PERMANENT = "permanent"
EXHAUSTED = "exhausted"


@dataclass(frozen=True, slots=True)
class Settlement:
    """A finished call's outcome: ``record`` (a changed copy) is to be written back, its
    queue entry deleted, and, for a RETRY, the command queued again under
    ``requeue_key``."""

    record: Delivery
    result: str  # SENT, RETRY, PERMANENT or EXHAUSTED
    requeue_key: bytes | None = None
    dead_letter: DeadLetterNote | None = None
    # the provider said the address does not exist: suppress it (a hard bounce)
    suppress: bool = False


def settle(
    record: Delivery,
    outcome: Accepted | SendFailure,
    policy: RetryPolicy,
    now: int,
    jitter: float,
    source: str,
    who: str,
) -> Settlement:
    """The outcome of one attempt of ``record`` (left as it is: a round that fails
    after settling settles again). ``source`` names the dead-letter codes
    (``{source}_failed``, ``{source}_exhausted``); ``who`` answered (a provider, an
    endpoint), for the dead-letter reason. ``jitter`` in [0, 1) spreads the retries."""
    record = record.copy()
    if isinstance(outcome, Accepted):
        succeeded(record, outcome, now)
        return Settlement(record, SENT)
    decided = failed(record, outcome, policy, now, jitter)
    if decided.retry_at is not None:
        return Settlement(record, RETRY, requeue_key=record.queue_key)
    text = f"{who} {outcome.code}: {outcome.message}"
    if decided.reason == EXHAUSTED:
        text = f"gave up after {record.attempts} attempts; last: {text}"
        note = DeadLetterNote(f"{source}_exhausted", text)
    else:
        note = DeadLetterNote(f"{source}_failed", text)
    return Settlement(record, decided.reason, dead_letter=note, suppress=decided.suppress)


def first_attempt_wait(record: Delivery, event_at: object, now: int) -> float | None:
    """Seconds from the triggering event to a send accepted at its first attempt (None
    for a retried send, or a command that does not say when its event happened)."""
    if isinstance(event_at, int) and record.attempts == 1:
        return max(0, now - event_at) / 1000
    return None
