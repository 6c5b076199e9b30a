"""A send's delivery record: queue order, attempts, retries, giving up, crash recovery;
and the signed one-click unsubscribe tokens marketing mail carries."""

from __future__ import annotations

from typing import Any

import pytest

from mailstream.delivery.compose import Sender, compose, message_id
from mailstream.delivery.state_machine import (
    ATTEMPTING,
    DROPPED,
    FAILED,
    QUEUED,
    SENT,
    UNKNOWN,
    Delivery,
    QueueKey,
    RetryPolicy,
    accept,
    attempt,
    failed,
    orphaned,
    rank,
    rank_bounds,
    succeeded,
    suppressed_since,
    withheld,
)
from mailstream.delivery.unsubscribe_links import (
    Unsubscribe,
    UnsubscribeTokens,
    list_unsubscribe_headers,
)
from mailstream.providers.base import Accepted, SendFailure
from mailstream.suppression.entries import Suppression

NOW = 1_800_000_000_000
POLICY = RetryPolicy(max_attempts=3, base_s=2.0, max_delay_s=60.0)


def command(
    category: str = "transactional", priority: str = "normal", **extra: Any
) -> dict[str, Any]:
    return {
        "send_id": "s1",
        "tenant_id": "default",
        "user_id": "ada",
        "to": "ada@example.com",
        "category": category,
        "priority": priority,
        "subject": "Hi",
        "text": "Hello",
        "html": "<p>Hello</p>",
        "headers": {"X-Mailstream-Send-Id": "s1", "X-Mailstream-User-Id": "ada"},
        **extra,
    }


def test_every_transactional_send_queues_before_any_marketing_one() -> None:
    order = [
        ("transactional", "high"),
        ("transactional", "normal"),
        ("transactional", "low"),
        ("marketing", "high"),
        ("marketing", "normal"),
        ("marketing", "low"),
    ]
    keys = [
        QueueKey(rank(c, p), NOW + 10_000 - i, f"s{i}").encode() for i, (c, p) in enumerate(order)
    ]
    assert sorted(keys) == keys  # byte order is queue order, whatever the ready time


def test_queue_keys_round_trip_and_bounds_select_the_ready_ones() -> None:
    ready = QueueKey(1, NOW, "abc")
    later = QueueKey(1, NOW + 1, "abd")
    assert QueueKey.decode(ready.encode()) == ready
    start, end = rank_bounds(1, NOW)
    assert start <= ready.encode() < end
    assert not later.encode() < end
    assert not QueueKey(2, 0, "x").encode() < end


def test_a_new_command_is_queued_and_a_known_send_id_is_a_duplicate() -> None:
    delivery = accept(None, command(), NOW)
    assert delivery is not None and delivery.state == QUEUED
    assert delivery.queue_key == QueueKey(1, NOW, "s1").encode()
    assert accept(delivery, command(), NOW + 5) is None
    sent = Delivery(SENT, "transactional", "ada", "default")
    assert accept(sent, command(), NOW + 5) is None


def test_the_record_round_trips() -> None:
    delivery = accept(None, command("marketing"), NOW)
    assert delivery is not None
    attempt(delivery, NOW + 1)
    failed(delivery, SendFailure("http_500", "oops", retryable=True), POLICY, NOW + 2, 0.5)
    assert Delivery.decode(delivery.encode()) == delivery


def test_a_success_is_final() -> None:
    delivery = accept(None, command(), NOW)
    assert delivery is not None
    attempt(delivery, NOW + 1)
    assert (delivery.state, delivery.attempts) == (ATTEMPTING, 1)
    succeeded(delivery, Accepted("pm-42"), NOW + 2)
    assert (delivery.state, delivery.provider_id, delivery.queue_key) == (SENT, "pm-42", None)


@pytest.mark.parametrize(
    ("failure", "state", "reason", "suppress"),
    [
        (
            SendFailure("http_429", "slow down", retryable=True, retry_after=30),
            QUEUED,
            "retry",
            False,
        ),
        (SendFailure("smtp_421", "try later", retryable=True), QUEUED, "retry", False),
        (SendFailure("http_401", "bad key", retryable=False), FAILED, "permanent", False),
        (
            SendFailure("smtp_550", "user unknown", retryable=False, invalid_recipient=True),
            FAILED,
            "permanent",
            True,
        ),
    ],
)
def test_failures_are_retried_or_final(
    failure: SendFailure, state: str, reason: str, suppress: bool
) -> None:
    delivery = accept(None, command(), NOW)
    assert delivery is not None
    attempt(delivery, NOW)
    outcome = failed(delivery, failure, POLICY, NOW + 100, 0.0)
    assert (delivery.state, outcome.reason, outcome.suppress) == (state, reason, suppress)
    assert delivery.history == [[NOW + 100, failure.code, failure.message]]
    if state == QUEUED:
        assert outcome.retry_at is not None
        assert QueueKey.decode(delivery.queue_key or b"") == QueueKey(1, outcome.retry_at, "s1")
    else:
        assert outcome.retry_at is None and delivery.queue_key is None


def test_retries_back_off_honour_retry_after_and_give_up() -> None:
    delivery = accept(None, command(), NOW)
    assert delivery is not None
    waits = []
    now = NOW
    for _ in range(3):
        attempt(delivery, now)
        outcome = failed(
            delivery, SendFailure("http_503", "busy", retryable=True), POLICY, now, 0.0
        )
        if outcome.retry_at is None:
            break
        waits.append(outcome.retry_at - now)
        now = outcome.retry_at
    assert waits == [1000, 2000]  # 2 s and 4 s steps, half of each with no jitter
    assert (delivery.state, outcome.reason, delivery.attempts) == (FAILED, "exhausted", 3)
    assert len(delivery.history) == 3

    again = accept(None, command(), NOW)
    assert again is not None
    attempt(again, NOW)
    slow = SendFailure("http_429", "slow down", retryable=True, retry_after=45.0)
    assert failed(again, slow, POLICY, NOW, 0.0).retry_at == NOW + 45_000


@pytest.mark.parametrize(
    ("category", "requeued", "state"),
    [("transactional", True, QUEUED), ("marketing", False, UNKNOWN)],
)
def test_a_send_caught_mid_attempt_by_a_crash(category: str, requeued: bool, state: str) -> None:
    delivery = accept(None, command(category), NOW)
    assert delivery is not None
    attempt(delivery, NOW)
    assert orphaned(delivery, NOW + 60_000) is requeued
    assert delivery.state == state
    assert (delivery.queue_key is not None) is requeued


# ---- composing the message, and one-click unsubscribe -------------------------------

SECRET = "a-secret-of-sufficient-length"
SENDER = Sender(
    "Shop <hello@shop.example>", None, "shop.example", "https://mail.shop.example", None
)


def test_marketing_mail_carries_a_signed_one_click_link_and_transactional_none() -> None:
    tokens = UnsubscribeTokens(SECRET)
    marketing = compose(command("marketing"), SENDER, tokens)
    assert marketing.message_id == message_id("s1", "shop.example") == "<s1@shop.example>"
    assert marketing.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = marketing.headers["List-Unsubscribe"]
    assert link.startswith("<https://mail.shop.example/unsubscribe/")
    token = link.removeprefix("<https://mail.shop.example/unsubscribe/").removesuffix(">")
    assert tokens.verify(token) == Unsubscribe("default", "ada", "marketing", "s1")
    receipt = compose(command("transactional"), SENDER, tokens)
    assert "List-Unsubscribe" not in receipt.headers
    assert receipt.headers["X-Mailstream-Send-Id"] == "s1"


def test_a_forged_or_altered_token_does_not_verify() -> None:
    tokens = UnsubscribeTokens(SECRET)
    good = tokens.make(Unsubscribe("default", "ada", "marketing", "s1"))
    forged = UnsubscribeTokens("another-secret-of-same-length").make(
        Unsubscribe("default", "ada", "marketing", "s1")
    )
    payload, _, signature = good.partition(".")
    altered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
    for token in (forged, altered, "", "nonsense", good + "x"):
        assert tokens.verify(token) is None
    assert tokens.verify(good) is not None


def test_a_link_mailed_by_an_earlier_release_still_unsubscribes() -> None:
    # Links live in inboxes for years: the token format (and its salt) must not change.
    issued = "WyJkZWZhdWx0IiwiYWRhIiwibWFya2V0aW5nIiwiczEiXQ.7tKgNfDjrCr63lGPveIrQfqdqfg"
    assert UnsubscribeTokens(SECRET).verify(issued) == Unsubscribe(
        "default", "ada", "marketing", "s1"
    )


def test_the_mailto_fallback_is_added_when_configured() -> None:
    headers = list_unsubscribe_headers("tok", "https://x.example/", "unsub@x.example")
    assert headers["List-Unsubscribe"] == (
        "<https://x.example/unsubscribe/tok>, <mailto:unsub@x.example?subject=unsubscribe%20tok>"
    )


def test_a_short_secret_is_refused_and_never_shown() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        UnsubscribeTokens("short")
    assert SECRET not in repr(UnsubscribeTokens(SECRET))


# ---- suppressed after the command was written -------------------------------------------

UNSUBSCRIBED = Suppression("unsubscribe", "one-click", NOW - 1)
BOUNCED = Suppression("hard_bounce", "delivery:postmark:406", NOW - 1)


@pytest.mark.parametrize(
    "category,own,listed,blocked_by",
    [
        ("marketing", [], None, None),
        ("marketing", [UNSUBSCRIBED], None, "the user is suppressed"),
        ("transactional", [UNSUBSCRIBED], None, None),  # receipts still go out
        ("transactional", [BOUNCED], None, "the user is suppressed"),
        ("marketing", [], UNSUBSCRIBED, "global suppression list"),
        ("transactional", [], UNSUBSCRIBED, None),
        ("transactional", [], BOUNCED, "global suppression list"),
    ],
)
def test_a_send_suppressed_since_its_command_was_written_does_not_go(
    category: str, own: list[Suppression], listed: Suppression | None, blocked_by: str | None
) -> None:
    why = suppressed_since(category, own, listed)
    if blocked_by is None:
        assert why is None
        return
    assert why is not None and blocked_by in why
    delivery = accept(None, command(category), NOW)
    assert delivery is not None
    withheld(delivery, why, NOW)
    assert delivery.state == DROPPED and delivery.queue_key is None
    assert delivery.history[-1] == [NOW, "suppressed", why]
