"""decode_event: every validation rule, with the code for metrics and the reason for people."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mailstream.core.events import (
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    Event,
    Invalid,
    decode_event,
)

MAX_BYTES = 4096
DEFAULT_TENANT = "default"
TS = 1_700_000_000_000  # 2023-11-14, in epoch milliseconds

VALID: dict[str, Any] = {
    "event_id": "evt-1",
    "event_type": "page_view",
    "user_id": "alice",
    "timestamp": TS,
}

_DROP = object()


def doc(**changes: Any) -> dict[str, Any]:
    """The valid event with some fields replaced; ``field=_DROP`` removes the field."""
    out = dict(VALID)
    for name, value in changes.items():
        if value is _DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def raw(**changes: Any) -> bytes:
    return orjson.dumps(doc(**changes))


def identify(**traits: Any) -> bytes:
    return raw(event_type="identify", payload=traits)


def decode(data: bytes | None, max_bytes: int = MAX_BYTES) -> Event | Invalid:
    return decode_event(data, max_bytes=max_bytes, default_tenant=DEFAULT_TENANT)


def test_a_valid_event_decodes_with_every_field_set() -> None:
    data = raw(
        event_id="evt-42",
        event_type="order.placed",
        user_id="user:7",
        timestamp=TS + 5,
        tenant_id="acme",
        payload={"total": 12.5, "items": [1, 2]},
        metadata={"source": "web"},
    )

    assert decode(data) == Event(
        event_id="evt-42",
        event_type="order.placed",
        user_id="user:7",
        timestamp=TS + 5,
        tenant_id="acme",
        payload={"total": 12.5, "items": [1, 2]},
        metadata={"source": "web"},
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(raw(), id="tenant-absent"),
        pytest.param(raw(tenant_id=None), id="tenant-null"),
    ],
)
def test_the_default_tenant_applies_when_no_tenant_is_given(data: bytes) -> None:
    event = decode(data)

    assert isinstance(event, Event)
    assert event.tenant_id == DEFAULT_TENANT


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(raw(payload=_DROP, metadata=_DROP), id="absent"),
        pytest.param(raw(payload=None, metadata=None), id="null"),
    ],
)
def test_absent_or_null_payload_and_metadata_become_empty_objects(data: bytes) -> None:
    event = decode(data)

    assert isinstance(event, Event)
    assert (event.payload, event.metadata) == ({}, {})


def test_an_event_of_exactly_max_bytes_passes_and_one_more_byte_fails() -> None:
    data = raw()
    size = len(data)

    assert isinstance(decode(data, max_bytes=size), Event)
    too_large = decode(data, max_bytes=size - 1)
    assert too_large == Invalid(
        "too_large",
        f"event is {size} bytes, over the limit of {size - 1} (ingest.max_event_bytes)",
    )


def test_the_size_limit_is_checked_before_parsing() -> None:
    # A huge body is refused without being parsed, even when it is not JSON at all.
    result = decode(b"x" * (MAX_BYTES + 1))

    assert isinstance(result, Invalid)
    assert result.code == "too_large"


ACCEPTED = [
    pytest.param(raw(event_id="e" * 128), id="event_id-128-chars"),
    pytest.param(raw(user_id="u" * 256), id="user_id-256-chars"),
    pytest.param(raw(event_type="t" * 128), id="event_type-128-chars"),
    pytest.param(raw(event_type="App_v2.order:placed-1"), id="event_type-all-allowed-chars"),
    pytest.param(raw(user_id="user:42/ünï 🎉"), id="user_id-any-characters"),
    pytest.param(raw(timestamp=MIN_TIMESTAMP_MS), id="timestamp-year-2000"),
    pytest.param(raw(timestamp=MAX_TIMESTAMP_MS), id="timestamp-at-upper-limit"),
    pytest.param(raw(tenant_id="t" * 64), id="tenant-64-chars"),
    pytest.param(raw(tenant_id="acme.eu-1_b"), id="tenant-all-allowed-chars"),
    pytest.param(identify(email="ada@example.com"), id="identify-email"),
    pytest.param(identify(email="  Ada@Example.COM "), id="identify-email-padded"),
    pytest.param(identify(timezone="Europe/Paris"), id="identify-timezone"),
    pytest.param(identify(timezone="UTC"), id="identify-timezone-utc"),
    pytest.param(
        identify(consent={"marketing": True, "transactional": False}), id="identify-consent"
    ),
    pytest.param(identify(consent={"marketing": None}), id="identify-consent-flag-null"),
    pytest.param(
        identify(email=None, timezone=None, first_name=None, consent=None),
        id="identify-null-traits-remove",
    ),
    pytest.param(
        identify(first_name="Ada", last_name="Lovelace", locale="en-GB", plan="pro"),
        id="identify-names-and-custom-trait",
    ),
    pytest.param(
        raw(event_type="signup", payload={"email": "not-an-email", "timezone": "Mars/Base"}),
        id="traits-only-checked-on-identify",
    ),
]


@pytest.mark.parametrize("data", ACCEPTED)
def test_accepted(data: bytes) -> None:
    result = decode(data)

    assert isinstance(result, Event), result
    assert result.event_id == orjson.loads(data)["event_id"]


REJECTED = [
    # the message as a whole
    pytest.param(None, "not_json", "has no value (a tombstone)", id="tombstone"),
    pytest.param(b"{not json", "not_json", "not valid JSON", id="not-json"),
    pytest.param(b"", "not_json", "not valid JSON", id="empty-body"),
    pytest.param(b"\xff\xfe", "not_json", "not valid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "not_object", "must be a JSON object, got array", id="array"),
    pytest.param(b'"hello"', "not_object", "must be a JSON object, got string", id="string"),
    pytest.param(b"42", "not_object", "must be a JSON object, got int", id="number"),
    pytest.param(b"null", "not_object", "must be a JSON object, got null", id="json-null"),
    # required fields
    pytest.param(raw(event_id=_DROP), "missing_field", "event_id is required", id="no-event_id"),
    pytest.param(
        raw(event_type=_DROP), "missing_field", "event_type is required", id="no-event_type"
    ),
    pytest.param(raw(user_id=_DROP), "missing_field", "user_id is required", id="no-user_id"),
    pytest.param(
        raw(timestamp=_DROP),
        "missing_field",
        "timestamp is required (epoch milliseconds)",
        id="no-timestamp",
    ),
    # types
    pytest.param(raw(user_id=42), "wrong_type", "user_id must be a string, got int", id="int-user"),
    pytest.param(
        raw(event_id=None), "wrong_type", "event_id must be a string, got null", id="null-event_id"
    ),
    pytest.param(
        raw(event_type=["a"]),
        "wrong_type",
        "event_type must be a string, got array",
        id="array-event_type",
    ),
    pytest.param(
        raw(timestamp=str(TS)),
        "wrong_type",
        "timestamp must be an integer of epoch milliseconds, got string",
        id="string-timestamp",
    ),
    pytest.param(
        raw(timestamp=True),
        "wrong_type",
        "timestamp must be an integer of epoch milliseconds, got boolean",
        id="boolean-timestamp",
    ),
    pytest.param(
        raw(timestamp=float(TS)),
        "wrong_type",
        "timestamp must be an integer of epoch milliseconds, got float",
        id="float-timestamp",
    ),
    # empty and too long
    pytest.param(
        raw(event_id=""), "empty_field", "event_id must not be empty", id="empty-event_id"
    ),
    pytest.param(
        raw(event_type=""), "empty_field", "event_type must not be empty", id="empty-event_type"
    ),
    pytest.param(
        raw(user_id="   "), "empty_field", "user_id must not be empty", id="blank-user_id"
    ),
    pytest.param(
        raw(event_id="e" * 129),
        "too_long",
        "event_id is 129 characters, over the limit of 128",
        id="event_id-129-chars",
    ),
    pytest.param(
        raw(user_id="u" * 257),
        "too_long",
        "user_id is 257 characters, over the limit of 256",
        id="user_id-257-chars",
    ),
    # event_type characters
    pytest.param(
        raw(event_type="sign up"),
        "bad_event_type",
        "event_type 'sign up' may hold only letters, digits and _ . : -",
        id="event_type-space",
    ),
    pytest.param(
        raw(event_type="signup!"), "bad_event_type", "may hold only", id="event_type-bang"
    ),
    pytest.param(
        raw(event_type="café"), "bad_event_type", "may hold only", id="event_type-non-ascii"
    ),
    pytest.param(raw(event_type="a/b"), "bad_event_type", "may hold only", id="event_type-slash"),
    # timestamps
    pytest.param(
        raw(timestamp=1_700_000_000),
        "bad_timestamp",
        "timestamp 1700000000 is before the year 2000: it must be epoch milliseconds, not seconds",
        id="timestamp-in-seconds",
    ),
    pytest.param(
        raw(timestamp=MIN_TIMESTAMP_MS - 1),
        "bad_timestamp",
        "before the year 2000",
        id="timestamp-just-before-2000",
    ),
    pytest.param(
        raw(timestamp=MAX_TIMESTAMP_MS + 1),
        "bad_timestamp",
        "too far in the future",
        id="timestamp-far-future",
    ),
    pytest.param(
        raw(timestamp=TS * 1000),
        "bad_timestamp",
        "too far in the future",
        id="timestamp-in-microseconds",
    ),
    # payload and metadata
    pytest.param(
        raw(payload=[1]), "wrong_type", "payload must be an object, got array", id="payload-array"
    ),
    pytest.param(
        raw(payload="x"), "wrong_type", "payload must be an object, got string", id="payload-str"
    ),
    pytest.param(
        raw(metadata=3), "wrong_type", "metadata must be an object, got int", id="metadata-int"
    ),
    # tenant
    pytest.param(raw(tenant_id=""), "bad_tenant", "tenant_id must be 1 to 64", id="tenant-empty"),
    pytest.param(
        raw(tenant_id="acme corp"), "bad_tenant", "letters, digits or _ . -", id="tenant-space"
    ),
    pytest.param(raw(tenant_id="a:b"), "bad_tenant", "tenant_id must be", id="tenant-colon"),
    pytest.param(raw(tenant_id="t" * 65), "bad_tenant", "tenant_id must be", id="tenant-65-chars"),
    pytest.param(raw(tenant_id=7), "bad_tenant", "tenant_id must be", id="tenant-int"),
    # identify traits
    pytest.param(
        identify(email="not-an-email"),
        "bad_email",
        "payload.email 'not-an-email' is not valid",
        id="identify-bad-email",
    ),
    pytest.param(
        identify(email="ada@"), "bad_email", "payload.email 'ada@' is not valid", id="no-domain"
    ),
    pytest.param(
        identify(email=42),
        "bad_email",
        "payload.email must be a string, got int",
        id="identify-email-not-string",
    ),
    pytest.param(
        identify(timezone="Mars/Olympus_Mons"),
        "bad_timezone",
        "payload.timezone 'Mars/Olympus_Mons' is not an IANA time zone",
        id="identify-unknown-timezone",
    ),
    pytest.param(
        identify(timezone="../../etc/passwd"),
        "bad_timezone",
        "is not an IANA time zone",
        id="identify-timezone-path",
    ),
    pytest.param(
        identify(timezone=""), "bad_timezone", "is not an IANA time zone", id="identify-tz-empty"
    ),
    pytest.param(
        identify(timezone=1),
        "bad_timezone",
        "payload.timezone must be a string, got int",
        id="identify-timezone-not-string",
    ),
    pytest.param(
        identify(consent=["marketing"]),
        "bad_consent",
        "payload.consent must be an object, got array",
        id="identify-consent-not-object",
    ),
    pytest.param(
        identify(consent={"marketing": "yes"}),
        "bad_consent",
        "payload.consent.marketing must be true, false or null, got string",
        id="identify-consent-flag-string",
    ),
    pytest.param(
        identify(consent={"transactional": 1}),
        "bad_consent",
        "payload.consent.transactional must be true, false or null, got int",
        id="identify-consent-flag-int",
    ),
    pytest.param(
        identify(first_name=5),
        "bad_trait",
        "payload.first_name must be a string, got int",
        id="identify-first_name-not-string",
    ),
    pytest.param(
        identify(last_name=["L"]),
        "bad_trait",
        "payload.last_name must be a string, got array",
        id="identify-last_name-not-string",
    ),
    pytest.param(
        identify(locale=True),
        "bad_trait",
        "payload.locale must be a string, got boolean",
        id="identify-locale-not-string",
    ),
]


@pytest.mark.parametrize(("data", "code", "reason"), REJECTED)
def test_rejected(data: bytes | None, code: str, reason: str) -> None:
    result = decode(data)

    assert isinstance(result, Invalid), result
    assert result.code == code
    assert reason in result.reason


def test_the_first_problem_in_field_order_is_reported() -> None:
    # Missing event_id and a bad timestamp: the reason names event_id, the first field checked.
    result = decode(raw(event_id=_DROP, timestamp="now"))

    assert result == Invalid("missing_field", "event_id is required")


def test_long_values_are_cut_short_in_reasons() -> None:
    result = decode(raw(event_type="x" * 100 + "!"))

    assert isinstance(result, Invalid)
    assert result.code == "bad_event_type"
    assert "x" * 81 not in result.reason


def test_event_type_with_a_trailing_newline_is_rejected() -> None:
    result = decode(raw(event_type="signup\n"))

    assert isinstance(result, Invalid)
    assert result.code == "bad_event_type"


def test_tenant_with_a_trailing_newline_is_rejected() -> None:
    result = decode(raw(tenant_id="acme\n"))

    assert isinstance(result, Invalid)
    assert result.code == "bad_tenant"


@pytest.mark.parametrize(
    "timezone",
    [
        pytest.param("America", id="zone-directory"),
        pytest.param("Europe", id="another-zone-directory"),
        pytest.param("A" * 300, id="name-too-long-for-the-filesystem"),
    ],
)
def test_a_timezone_that_is_not_a_zone_file_is_rejected_not_raised(timezone: str) -> None:
    result = decode(identify(timezone=timezone))

    assert isinstance(result, Invalid)
    assert result.code == "bad_timezone"
