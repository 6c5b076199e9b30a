"""A webhook call's record and how it moves: the deliveries' state machine, reused.

queued -> attempting -> sent (2xx)
                     -> queued again, after a backoff (5xx, 408, 429, timeout, no connection)
                     -> failed (another 4xx or 3xx, or the retries used up)
queued, its breaker open -> queued again for when the breaker lets a call through
queued longer than the endpoint's give_up_after -> failed (expired)
queued, its endpoint no longer configured -> failed (endpoint_gone)
attempting, found after a crash -> queued again (the receiver drops repeats by the id)

Pure: the agent passes the time, the answer and the jitter in.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mailstream.delivery.state_machine import FAILED, QUEUED, Delivery, QueueKey, rank_bounds
from mailstream.providers.base import SendFailure
from mailstream.providers.http_common import body_text, classify_http, parse_retry_after

CATEGORY = "webhook"
_RANK = 0  # one queue, in ready-time order


def ready_bounds(now: int) -> tuple[bytes, bytes]:
    """Queue keys ready at ``now`` sort in [start, end)."""
    return rank_bounds(_RANK, now)


def accept_call(existing: Delivery | None, command: Mapping[str, Any], now: int) -> Delivery | None:
    """A command arrives: a new queued call, or None for a webhook id seen before (a
    replayed or re-sent command)."""
    if existing is not None:
        return None
    return Delivery(
        state=QUEUED,
        category=CATEGORY,
        user_id=command["user_id"],
        tenant_id=command["tenant_id"],
        updated=now,
        queue_key=QueueKey(_RANK, now, command["webhook_id"]).encode(),
    )


def hold(delivery: Delivery, until: int) -> None:
    """Not called now (its breaker is open): queued again for ``until``, no attempt used."""
    assert delivery.queue_key is not None, "a queued call has a queue key"
    old = QueueKey.decode(delivery.queue_key)
    delivery.queue_key = QueueKey(old.rank, until, old.send_id).encode()


def breaker_wait_until(now: int, mono: float, until_mono: float | None, timeout: float) -> int:
    """When (epoch ms) a call held back by its open breaker is to be tried again: when
    the breaker's cool-down ends (``until_mono``, on the monotonic clock that reads
    ``mono`` now), or after the endpoint's ``timeout`` while a probe is out; 1 ms at
    least, so that it is not taken again in this round."""
    wait = until_mono - mono if until_mono is not None else timeout
    return now + max(1, int(wait * 1000))


def endpoint_gone(delivery: Delivery, now: int) -> None:
    """Its endpoint was removed from the config since the command was queued: failed."""
    delivery.state, delivery.queue_key, delivery.updated = FAILED, None, now
    delivery.history.append([now, "unknown_endpoint", "the endpoint is no longer configured"])


def expired(command: Mapping[str, Any], give_up_after_ms: int, now: int) -> bool:
    return bool(now - command["created_at"] >= give_up_after_ms)


def expire(delivery: Delivery, now: int, give_up_after_ms: int) -> None:
    delivery.state = FAILED
    delivery.updated = now
    delivery.queue_key = None
    delivery.history.append(
        [now, "expired", f"not delivered within {give_up_after_ms / 1000:g}s of the step"]
    )


def answer_failure(
    status: int, headers: Mapping[str, str], body: bytes, now: datetime
) -> SendFailure | None:
    """None for a 2xx answer; otherwise the failure, retryable for 408, 429 and 5xx."""
    if 200 <= status <= 299:
        return None
    retry_after = parse_retry_after(headers.get("Retry-After"), now)
    return classify_http(status, retry_after, message=body_text(body))


def breaker_failure(failure: SendFailure | None) -> bool:
    """What the circuit breaker counts against the URL: the endpoint did not answer, or
    answered that it is down or overloaded. A 4xx means it is up."""
    return failure is not None and failure.retryable
