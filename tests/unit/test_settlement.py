"""Settling a finished call (mailstream.delivery.settlement), the same for a send and a
webhook call, on a fake clock and a fixed jitter; and reading commands back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mailstream.delivery.send_command import decode_send_command
from mailstream.delivery.settlement import (
    EXHAUSTED,
    PERMANENT,
    RETRY,
    SENT,
    first_attempt_wait,
    settle,
)
from mailstream.delivery.state_machine import (
    FAILED,
    QUEUED,
    Delivery,
    QueueKey,
    RetryPolicy,
    accept,
    attempt,
)
from mailstream.providers.base import Accepted, SendFailure
from mailstream.webhooks_out.call_command import decode_command

NOW = 1_772_366_400_000  # the fake clock: 2026-03-01T12:00:00Z
POLICY = RetryPolicy(max_attempts=3, base_s=2.0, max_delay_s=600.0)


def attempting(attempts: int = 1) -> Delivery:
    command = {"send_id": "s1", "tenant_id": "acme", "user_id": "u1", "category": "marketing"}
    record = accept(None, command, NOW - 10_000)
    assert record is not None
    for _ in range(attempts):
        attempt(record, NOW - 1000)
    return record


def fail(code: str = "http_503", retryable: bool = True, **more: Any) -> SendFailure:
    return SendFailure(code, "busy", retryable=retryable, **more)


@pytest.mark.parametrize(
    ("attempts", "outcome", "jitter", "result", "retry_in_ms", "code", "suppress"),
    [
        (1, Accepted("pm-1"), 0.5, SENT, None, None, False),
        (1, fail(), 0.0, RETRY, 1000, None, False),  # half of base 2 s, no jitter
        (1, fail(), 0.999, RETRY, 1999, None, False),  # up to all of it
        (2, fail(), 0.0, RETRY, 2000, None, False),  # the step doubles
        (1, fail(retry_after=30.0), 0.0, RETRY, 30_000, None, False),  # the provider's floor
        (3, fail(), 0.0, EXHAUSTED, None, "delivery_exhausted", False),
        (1, fail("http_422", retryable=False), 0.0, PERMANENT, None, "delivery_failed", False),
        (
            1,
            fail("smtp_550", retryable=False, invalid_recipient=True),
            0.0,
            PERMANENT,
            None,
            "delivery_failed",
            True,  # a hard bounce
        ),
    ],
)
def test_an_attempt_settles_as_sent_retried_or_given_up(
    attempts: int,
    outcome: Accepted | SendFailure,
    jitter: float,
    result: str,
    retry_in_ms: int | None,
    code: str | None,
    suppress: bool,
) -> None:
    record = attempting(attempts)
    before = record.encode()
    s = settle(record, outcome, POLICY, NOW, jitter, "delivery", "postmark")
    assert record.encode() == before, "the record in hand stays as it came"
    assert (s.result, s.suppress) == (result, suppress)
    assert s.record.updated == NOW
    if retry_in_ms is None:
        assert s.requeue_key is None and s.record.queue_key is None
    else:
        assert s.record.state == QUEUED and s.requeue_key == s.record.queue_key
        assert s.requeue_key is not None
        assert QueueKey.decode(s.requeue_key).ready == NOW + retry_in_ms
    if code is None:
        assert s.dead_letter is None
    else:
        assert s.dead_letter is not None and s.dead_letter.code == code
        assert s.dead_letter.attempts
        assert s.record.state == FAILED
    if result == SENT:
        assert (s.record.state, s.record.provider_id) == ("sent", "pm-1")


def test_the_dead_letter_says_who_answered_what_and_after_how_many_attempts() -> None:
    s = settle(attempting(3), fail(), POLICY, NOW, 0.0, "webhook", "crm")
    assert s.dead_letter is not None
    assert s.dead_letter.code == "webhook_exhausted"
    assert s.dead_letter.text == "gave up after 3 attempts; last: crm http_503: busy"
    s = settle(attempting(1), fail("http_404", False), POLICY, NOW, 0.0, "webhook", "crm")
    assert s.dead_letter is not None
    assert (s.dead_letter.code, s.dead_letter.text) == ("webhook_failed", "crm http_404: busy")


@pytest.mark.parametrize(
    ("attempts", "event_at", "wait"),
    [
        (1, NOW - 1500, 1.5),
        (1, NOW + 10, 0.0),  # clocks apart: never negative
        (2, NOW - 1500, None),  # a retry says nothing of the path from the event
        (1, None, None),
        (1, "yesterday", None),
    ],
)
def test_event_to_send_is_measured_on_first_attempts(
    attempts: int, event_at: object, wait: float | None
) -> None:
    assert first_attempt_wait(attempting(attempts), event_at, NOW) == wait


SEND = {
    "send_id": "s1",
    "tenant_id": "acme",
    "user_id": "u1",
    "to": "a@example.com",
    "category": "marketing",
    "subject": "Hi",
    "text": "t",
    "html": "<p>t</p>",
}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({}, None),
        ({"priority": "high"}, None),
        ({"to": 5}, "missing or not a string: to"),
        ({"category": "spam"}, "unknown category 'spam'"),
        ({"priority": "urgent"}, "priority must be one of high, normal, low"),
        ({"tenant_id": "a b"}, "tenant_id must be 1 to 64 letters, digits or _ . -"),
    ],
)
def test_a_send_command_is_read_back_or_says_what_is_wrong(
    change: dict[str, Any], why: str | None
) -> None:
    found = decode_send_command(orjson.dumps({**SEND, **change}))
    assert found == why if why is not None else found == {**SEND, **change}


@pytest.mark.parametrize("decode", [decode_send_command, decode_command])
@pytest.mark.parametrize(
    ("value", "why"), [(b"{", "not JSON"), (b"[]", "not a JSON object"), (None, "not JSON")]
)
def test_both_command_types_reject_what_is_not_a_json_object(
    decode: Any, value: bytes | None, why: str
) -> None:
    found = decode(value)
    assert isinstance(found, str) and found.startswith(why)


def test_a_webhook_command_needs_non_empty_strings() -> None:
    assert decode_command(orjson.dumps({"webhook_id": ""})).startswith(
        "missing or not a non-empty string: webhook_id, tenant_id"
    )
