"""The replay guard's decisions: a key is let through once while its signature could pass
as fresh, a crash's re-application is told from a replay, and keys expire."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mailstream.feedback.normalised import BOUNCE, Feedback
from mailstream.feedback.provider_webhooks import (
    SendGridWebhook,
    SendGridWebhookSettings,
    WebhookRequest,
)
from mailstream.feedback.replay_guard import (
    EXPIRY_MARGIN_MS,
    Claim,
    Entry,
    Verdict,
    due_of,
    entry_key,
    entry_of,
    expired,
    expiry_key,
    expiry_range,
    judge,
)
from tests.fakes.webhook_signing import sendgrid_keypair, sendgrid_sign

NOW = 1_700_000_000.0
BOUNCED = Feedback(kind=BOUNCE, provider="mailgun", at=1, user_id="u-1", bounce="hard")


def claim(received: int, until: int = 10_000, key: str = "mailgun:tok") -> Claim:
    return Claim((BOUNCED,), key, until, received)


@pytest.mark.parametrize(
    ("stored", "offset", "received", "verdict"),
    [
        (None, 7, 5_000, Verdict.FIRST),  # never seen
        (Entry(10_000, 3), 7, 5_000, Verdict.REPLAYED),  # another claim took the key
        (Entry(10_000, 3), 7, 9_999, Verdict.REPLAYED),  # ... up to the last fresh ms
        (Entry(10_000, 7), 7, 5_000, Verdict.AGAIN),  # this claim, before a crash
        (Entry(10_000, 3), 7, 10_000, Verdict.FIRST),  # received once the key expired
    ],
)
def test_judge(stored: Entry | None, offset: int, received: int, verdict: str) -> None:
    assert judge(claim(received), stored, offset) == verdict


def test_a_claim_survives_its_topic() -> None:
    original = Claim((BOUNCED, BOUNCED), "sendgrid:sha256:ab", 1234, 567)
    assert Claim.decode(original.encode()) == original
    assert Claim.decode(Claim((), "mailgun:t", 1, 0).encode()).feedback == ()


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"until": 1, "received": 1, "feedback": []}',
        b'{"key": "k", "until": -1, "received": 1, "feedback": []}',
        b'{"key": "k", "until": true, "received": 1, "feedback": []}',
        b'{"key": "k", "until": 1, "received": 1, "feedback": {}}',
        b'{"key": "k", "until": 1, "received": 1, "feedback": [{"kind": "nope"}]}',
        b"not json",
    ],
)
def test_a_malformed_claim_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, TypeError)):
        Claim.decode(raw)


def test_the_expiry_index_sorts_by_time_and_names_its_entry() -> None:
    keys = [expiry_key(t, "mailgun:a b") for t in (9, 10, 1_700_000_000_000)]
    assert keys == sorted(keys)
    assert [due_of(k) for k in keys] == [9, 10, 1_700_000_000_000]
    assert {entry_of(k) for k in keys} == {entry_key("mailgun:a b")}
    with pytest.raises(ValueError):
        due_of(entry_key("mailgun:a"))


def test_keys_expire_once_claims_received_well_after_them_are_applied() -> None:
    old, renewed = expiry_key(1_000, "k:old"), expiry_key(2_000, "k:re")
    recent = expiry_key(50_000, "k:recent")
    index = [old, renewed, recent]
    entries = {
        entry_key("k:old"): Entry(1_000, 1),
        entry_key("k:re"): Entry(80_000, 9),  # a later claim renewed it
        entry_key("k:recent"): Entry(50_000, 5),
    }
    # nothing newer applied yet: nothing goes, however late the guard's own clock is
    assert expired(index, 1_999 + EXPIRY_MARGIN_MS, entries) == [old, entry_key("k:old")]
    assert expired(index, 0, entries) == []
    # the renewed key keeps its entry; only its stale index key goes
    assert expired(index, 2_001 + EXPIRY_MARGIN_MS, entries) == [
        old,
        entry_key("k:old"),
        renewed,
    ]
    start, end = expiry_range(2_001 + EXPIRY_MARGIN_MS)
    assert [k for k in index if start <= k < end] == [old, renewed]


def _sendgrid_claims(events: list[dict[str, Any]], now: float) -> list[Claim]:
    private_key, public_key = sendgrid_keypair()
    handler = SendGridWebhook(
        SendGridWebhookSettings(), {"SENDGRID_WEBHOOK_PUBLIC_KEY": public_key}
    )
    body = json.dumps(events).encode()
    headers = sendgrid_sign(private_key, body, now)
    return handler.handle(WebhookRequest(headers, body, "application/json"), now)


def test_sendgrid_events_without_an_id_are_keyed_by_their_content() -> None:
    soft = {"email": "a@example.com", "timestamp": 1, "event": "bounce", "type": "blocked"}
    first = _sendgrid_claims([soft, {**soft, "timestamp": 2}], NOW)
    # the same events again, keys in another order, in a request signed later
    reordered = {k: soft[k] for k in reversed(list(soft))}
    again = _sendgrid_claims([reordered], NOW + 30)
    assert len({c.key for c in first}) == 2, "two soft bounces are two events"
    assert again[0].key == first[0].key, "a replayed event has the same key"
    assert first[0].key is not None and first[0].key.startswith("sendgrid:sha256:")
    assert first[0].feedback[0].event_id == first[0].key.removeprefix("sendgrid:")
    # kept until the signed timestamp is stale (max_age 300 s by default)
    assert (first[0].received, first[0].until) == (NOW * 1000, (NOW + 300) * 1000 + 1)


def test_sendgrid_events_with_an_id_are_keyed_by_it() -> None:
    event = {"email": "a@example.com", "timestamp": 1, "event": "open", "sg_event_id": "e-1"}
    [found] = _sendgrid_claims([event], NOW)
    assert found.key == "sendgrid:e-1" and found.feedback[0].event_id == "e-1"
