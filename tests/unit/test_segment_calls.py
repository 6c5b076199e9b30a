"""Segment-shaped calls as mailstream events: the fields map, the rules of Kafka events
apply, and an error names the field as the caller wrote it; write keys decide the tenant."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from mailstream.config.schema import Config
from mailstream.core.events import DEFAULT_LIMITS
from mailstream.core.segment_calls import BadCall, to_event
from mailstream.exceptions import ConfigError
from mailstream.web.track_api import events_of, presented_key, tenant_of, write_keys

NOW = 1_800_000_000_000


def event(call: Any, kind: str | None = "track", tenant: str = "acme") -> Any:
    return to_event(call, kind, tenant, NOW, 65_536, DEFAULT_LIMITS)[1]


def test_a_track_call_becomes_an_event_of_its_tenant() -> None:
    got = event(
        {
            "userId": "u1",
            "event": "cart_updated",
            "properties": {"items": [{"sku": "mug"}]},
            "messageId": "m-1",
            "timestamp": "2027-01-15T08:00:00Z",
            "context": {"consent_source": "user", "ip": "203.0.113.9"},
        }
    )
    assert (got.event_id, got.event_type, got.user_id, got.tenant_id) == (
        "m-1",
        "cart_updated",
        "u1",
        "acme",
    )
    assert got.timestamp == int(datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp() * 1000)
    assert got.payload == {"items": [{"sku": "mug"}]}
    assert got.metadata == {"via": "http", "consent_source": "user"}  # nothing else of context


def test_an_identify_call_carries_traits_and_a_missing_id_and_time_are_filled_in() -> None:
    got = event({"userId": "u1", "traits": {"email": "ada@example.com"}}, "identify")
    assert got.event_type == "identify" and got.payload == {"email": "ada@example.com"}
    assert got.timestamp == NOW and len(got.event_id) == 32


@pytest.mark.parametrize(
    ("call", "kind", "field"),
    [
        ({"event": "x"}, "track", "userId"),
        ({"userId": 7, "event": "x"}, "track", "userId"),
        ({"userId": "u1"}, "track", "event"),
        ({"userId": "u1", "event": "bad event!"}, "track", "event"),
        ({"userId": "u1", "event": "x", "properties": [1]}, "track", "properties"),
        ({"userId": "u1", "traits": {"consent": "yes"}}, "identify", "traits.consent"),
        ({"userId": "u1", "traits": {"timezone": "Mars/Olympus"}}, "identify", "traits.timezone"),
        ({"userId": "u1", "event": "x", "messageId": 5}, "track", "messageId"),
        ({"userId": "u1", "event": "x", "timestamp": "yesterday"}, "track", "timestamp"),
        ({"userId": "u1", "type": "page"}, None, "type"),
        ("a string", "track", "object"),
    ],
)
def test_a_call_that_is_not_taken_names_the_field_as_written(
    call: Any, kind: str | None, field: str
) -> None:
    with pytest.raises(BadCall) as caught:
        event(call, kind)
    assert field in caught.value.detail


def test_a_batch_names_the_call_at_fault() -> None:
    config = Config()
    good = {"type": "track", "userId": "u1", "event": "x"}
    assert (
        len(events_of({"batch": [good, {**good, "type": "identify"}]}, None, "t", NOW, config)) == 2
    )
    with pytest.raises(BadCall, match=r"^batch\[1\]\.event"):
        events_of({"batch": [good, {"type": "track", "userId": "u2"}]}, None, "t", NOW, config)
    for body in ({"batch": []}, {"calls": [good]}, [good]):
        with pytest.raises(BadCall, match="^batch:"):
            events_of(body, None, "t", NOW, config)


def test_write_keys_decide_the_tenant_and_a_bad_one_fails_naming_it() -> None:
    config = Config.model_validate(
        {
            "http_ingest": {
                "enabled": True,
                "write_keys_env": {"acme": "ACME_KEY", "beta": "BETA_KEY"},
            }
        }
    )
    env = {"ACME_KEY": "a" * 16, "BETA_KEY": "b" * 20}
    keys = write_keys(config, env)
    basic = "Basic " + base64.b64encode(b"b" * 20 + b":").decode()
    assert tenant_of(basic, keys) == "beta"
    assert tenant_of("Bearer " + "a" * 16, keys) == "acme"
    for header in (None, "", "Bearer ", "Bearer " + "c" * 16, "Basic !!", "Token " + "a" * 16):
        assert tenant_of(header, keys) is None
    assert presented_key("Basic " + base64.b64encode(b"key-only").decode()) == "key-only"
    with pytest.raises(ConfigError, match=r"http_ingest\.write_keys_env\.beta: set \$BETA_KEY"):
        write_keys(config, {"ACME_KEY": "a" * 16, "BETA_KEY": "short"})
    with pytest.raises(ConfigError, match="write key of tenant 'acme' too"):
        write_keys(config, {"ACME_KEY": "a" * 16, "BETA_KEY": "a" * 16})
