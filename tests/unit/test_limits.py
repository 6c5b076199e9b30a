"""Poison inputs at validation: nesting, keys, strings and arrays over ingest.limits,
control characters in ids, identifies that would make a user record too large, and
dead letters cut to what the producer may send."""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

import orjson
import pytest

from mailstream.cli.loadgen import synthetic_events
from mailstream.config.load import parse_config
from mailstream.core.events import (
    DEFAULT_LIMITS,
    Event,
    Invalid,
    Limits,
    check_limits,
    decode_event,
    within_limits,
)
from mailstream.core.ingest_batch import DEAD_LETTERED, PROCESSED, IngestSettings, ingest_batch
from mailstream.core.user_state import UserState, identify_problem, user_key
from mailstream.exceptions import ConfigError
from mailstream.kafka.records import RawMessage
from mailstream.state.staged_flush import Outbox
from mailstream.workflows.apply_effects import (
    PRODUCER_MAX_REQUEST_BYTES,
    dead_letter_message,
    fit_dead_letter,
)

TS = 1_700_000_000_000


def raw(payload: Any = None, **fields: Any) -> bytes:
    doc = {"event_id": "e1", "event_type": "cart_updated", "user_id": "ada", "timestamp": TS}
    doc.update(fields)
    if payload is not None:
        doc["payload"] = payload
    return orjson.dumps(doc)


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Event | Invalid:
    return decode_event(data, max_bytes=65_536, default_tenant="default", limits=limits)


def nested(levels: int) -> Any:
    value: Any = "deep"
    for _ in range(levels):
        value = {"a": value}
    return value


def deep_identify(levels: int) -> bytes:
    """An identify whose trait ``t`` nests ``levels`` objects deep, written by hand:
    orjson itself encodes no more than 254 levels."""
    trait = b'{"a":' * levels + b"1" + b"}" * levels
    return (
        b'{"event_id": "e1", "event_type": "identify", "user_id": "ada", "timestamp": '
        + str(TS).encode()
        + b', "payload": {"t": '
        + trait
        + b"}}"
    )


@pytest.mark.parametrize("levels", [300, 250])
def test_a_trait_nested_hundreds_of_levels_is_rejected_cheaply_naming_the_field(
    levels: int,
) -> None:
    data = deep_identify(levels)
    assert len(data) < 2100
    orjson.loads(data)  # valid JSON: nothing but the depth limit stops it

    started = time.perf_counter()
    result = decode(data)
    elapsed = time.perf_counter() - started

    assert isinstance(result, Invalid)
    assert result.code == "over_limit"
    assert result.reason.startswith("payload.t.a.a.a")
    assert "is nested 17 levels deep, over the limit of 16 (ingest.limits.max_depth)" in (
        result.reason
    )
    assert len(result.reason) < 400
    assert elapsed < 0.01


@pytest.mark.parametrize(
    ("payload", "metadata", "field", "key"),
    [
        (nested(17), None, "payload" + ".a" * 16, "max_depth"),
        (
            {"list": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]},
            None,
            "payload.list" + "[0]" * 15,
            "max_depth",
        ),
        (None, nested(20), "metadata" + ".a" * 16, "max_depth"),
        ({f"k{i}": i for i in range(257)}, None, "payload has 257", "max_keys"),
        (
            {"cart": {"note": "x" * 16_385}},
            None,
            "payload.cart.note is a string",
            "max_string_chars",
        ),
        ({"x" * 16_385: 1}, None, "payload has a key of 16385", "max_string_chars"),
        ({"items": list(range(1001))}, None, "payload.items is an array", "max_list_items"),
        (
            {f"o{j}": {f"k{i}": i for i in range(200)} for j in range(10)},
            {f"m{i}": i for i in range(100)},
            "more than 2048 keys",
            "max_total_keys",
        ),
    ],
)
def test_a_payload_or_metadata_over_a_limit_is_rejected_naming_it(
    payload: Any, metadata: Any, field: str, key: str
) -> None:
    data = raw(payload, **({"metadata": metadata} if metadata is not None else {}))

    result = decode_event(data, max_bytes=1 << 20, default_tenant="default")

    assert isinstance(result, Invalid)
    assert result.code == "over_limit"
    assert field in result.reason
    assert f"(ingest.limits.{key})" in result.reason


def test_a_payload_at_every_limit_is_accepted() -> None:
    limits = Limits(max_depth=3, max_keys=3, max_total_keys=6, max_string_chars=5, max_list_items=2)
    payload = {"a": {"b": ["abcde", "x"]}, "c": 1, "d": None}
    metadata = {"e": 1, "f": 2}

    assert isinstance(decode(raw(payload, metadata=metadata), limits), Event)
    assert isinstance(decode(raw({"a": {"b": [[1]]}}), limits), Invalid)
    assert isinstance(decode(raw({"a": "abcdef"}), limits), Invalid)
    assert isinstance(decode(raw(payload, metadata={"e": 1, "f": 2, "g": 3}), limits), Invalid)


def test_the_21000_item_order_of_the_report_is_rejected_by_the_array_limit() -> None:
    items = [i % 100 for i in range(21_000)]
    data = raw({"order_id": "A-1", "items": items}, event_type="order_completed")
    assert 60_000 < len(data) < 65_536  # under ingest.max_event_bytes

    result = decode(data)

    assert isinstance(result, Invalid)
    assert "payload.items is an array of 21000, over the limit of 1000" in result.reason


def test_the_demo_and_bench_traffic_stays_within_the_default_limits() -> None:
    events = synthetic_events(random.Random(3), users=50, start_ms=TS)
    for _ in range(3000):
        _key, value = next(events)
        result = decode(value)
        assert isinstance(result, Event), result


@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\x1f", "\x7f"])
@pytest.mark.parametrize("field", ["user_id", "event_id"])
def test_a_control_character_in_an_id_is_rejected(field: str, char: str) -> None:
    result = decode(raw(**{field: f"ada{char}x"}))

    assert isinstance(result, Invalid)
    assert result.code == "control_character"
    assert result.reason.startswith(f"{field} holds the control character {char!r} at position 3")


def test_a_control_character_in_a_tenant_id_is_rejected() -> None:
    result = decode(raw(tenant_id="acme\x00"))

    assert isinstance(result, Invalid) and result.code == "bad_tenant"


def test_printable_unicode_ids_are_accepted() -> None:
    assert isinstance(decode(raw(user_id="zoë é 用户", event_id="évt 1")), Event)


# ---- user records (item 9) -----------------------------------------------------------


def test_an_identify_with_too_many_traits_is_refused_and_the_state_kept() -> None:
    state = UserState("default", "ada", traits={f"t{i}": i for i in range(199)})
    before = state.encode()

    assert identify_problem(state, {"t1": None, "new": 1}, DEFAULT_LIMITS) is None
    problem = identify_problem(state, {"new": 1, "newer": 2}, DEFAULT_LIMITS)

    assert problem is not None and problem.code == "user_too_large"
    assert "201 traits, over the limit of 200 (ingest.limits.max_traits)" in problem.reason
    assert state.encode() == before


def test_an_identify_that_would_make_the_record_too_large_is_refused() -> None:
    state = UserState("default", "ada", traits={"bio": "x" * 100_000}, consent={"marketing": True})
    before = state.encode()
    limits = Limits(max_user_record_bytes=131_072)

    problem = identify_problem(state, {"cv": "y" * 40_000, "consent": None}, limits)

    assert problem is not None and problem.code == "user_too_large"
    assert "(ingest.limits.max_user_record_bytes)" in problem.reason
    assert state.encode() == before
    # Replacing the large trait keeps the record small: accepted.
    assert identify_problem(state, {"bio": None, "cv": "y" * 40_000}, limits) is None


def test_repeated_large_identifies_stop_growing_the_record_in_ingest() -> None:
    settings = IngestSettings(65_536, "default", 3600.0, 1000)
    stored: dict[tuple[int, bytes], bytes] = {}

    def load(partition: int, key: bytes) -> UserState | None:
        data = stored.get((partition, key))
        return None if data is None else UserState.decode(data)

    outcomes: list[str] = []
    for i in range(10):
        payload = {f"blob{i}": "z" * 15_000}
        value = raw(payload, event_type="identify", event_id=f"id-{i}")
        result = ingest_batch([RawMessage("events", 0, i, b"ada", value)], load, TS, settings)
        for slot, state in result.changed.items():
            stored[slot] = state.encode()
        outcomes += [outcome for (outcome, _label), n in result.outcomes.items() for _ in range(n)]
        if result.dead_letters:
            assert result.dead_letters[0].code == "user_too_large"

    record = stored[(0, user_key("default", "ada"))]
    assert len(record) <= DEFAULT_LIMITS.max_user_record_bytes
    assert outcomes.count(PROCESSED) == 8 and outcomes.count(DEAD_LETTERED) == 2
    # The events refused are not remembered as seen: sent again, they are refused again.
    assert len(UserState.decode(record).traits) == 8


# ---- dead letters that fit ------------------------------------------------------------


def test_a_dead_letter_that_fits_is_sent_as_it_came() -> None:
    headers = [("mailstream.reason", b"why")]

    assert fit_dead_letter(b"ada", b"x" * 1000, headers, 10_000) == (
        b"ada",
        b"x" * 1000,
        headers,
    )


def test_a_one_megabyte_event_is_dead_lettered_cut_to_fit_with_its_size_and_hash() -> None:
    value = bytes(random.Random(1).randbytes(1_000_000))
    message = RawMessage("events", 2, 7, b"ada", value)
    outbox = Outbox()

    dead_letter_message(outbox, "dlq", message, "too_large", "event is 1000000 bytes")

    [(topic, key, sent, headers, _partition)] = outbox.messages
    assert headers is not None
    size = len(key or b"") + len(sent) + sum(len(n) + len(v) for n, v in headers)
    assert size <= PRODUCER_MAX_REQUEST_BYTES - 512
    assert topic == "dlq" and key == b"ada"
    assert value.startswith(sent) and len(sent) > 990_000
    h = dict(headers)
    assert h["mailstream.truncated"] == b"true"
    assert h["mailstream.original_size"] == b"1000000"
    assert h["mailstream.original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert h["mailstream.reason_code"] == b"too_large"


def test_a_huge_key_and_reason_are_cut_too() -> None:
    message = RawMessage("events", 0, 1, b"k" * 900_000, b"v" * 200_000)
    outbox = Outbox()

    dead_letter_message(outbox, "dlq", message, "engine_error", "r" * 100_000)

    [(_, key, value, headers, _partition)] = outbox.messages
    assert headers is not None
    assert key == b"k" * 1024
    h = dict(headers)
    assert h["mailstream.original_key_size"] == b"900000"
    assert len(h["mailstream.reason"]) <= 2048
    assert len(key) + len(value) + sum(len(n) + len(v) for n, v in headers) < 1_000_000


# ---- config ---------------------------------------------------------------------------


def test_limits_come_from_the_config() -> None:
    config = parse_config(
        {"ingest": {"limits": {"max_depth": 8, "max_traits": 50}}}, "mailstream.yaml", env={}
    )

    limits = config.ingest.limits.limits()
    assert limits.max_depth == 8 and limits.max_traits == 50
    assert limits.max_list_items == DEFAULT_LIMITS.max_list_items


def test_a_bad_limit_fails_at_start_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"ingest": {"limits": {"max_depth": 500}}}, "mailstream.yaml", env={})

    assert "ingest.limits.max_depth" in str(info.value)


def random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 6 or roll < 0.4:
        return rng.choice([1, "ab", "a{[:,", None, True, "x" * rng.randint(0, 12)])
    if roll < 0.7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def test_the_quick_byte_count_never_passes_an_event_the_walk_refuses() -> None:
    rng = random.Random(5)
    limits = Limits(
        max_depth=5, max_keys=12, max_total_keys=16, max_string_chars=4096, max_list_items=6
    )
    refused = quick = 0
    for _ in range(3000):
        payload = {f"p{i}": random_value(rng, 2) for i in range(rng.randint(0, 3))}
        walked = check_limits({"payload": payload, "metadata": {}}, limits)
        refused += walked is not None
        if within_limits(raw(payload), limits):
            quick += 1
            assert walked is None, payload
    assert refused > 100 and quick > 100, (refused, quick)


def test_the_dedup_memory_does_not_count_against_the_record_size() -> None:
    state = UserState("default", "busy")
    for i in range(15_000):  # a busy day: 15,000 event ids remembered, about 180 KB
        state.seen.remember(i, 1_700_000_000 + i)
    assert len(state.encode()) > DEFAULT_LIMITS.max_user_record_bytes

    assert identify_problem(state, {"email": "busy@example.com"}, DEFAULT_LIMITS) is None


def test_an_identify_that_adds_nothing_fits_a_record_already_over_the_limit() -> None:
    # Grown large by a workflow's context, say, or under a higher limit before.
    state = UserState(
        "default",
        "ada",
        traits={f"t{i}": i for i in range(250)} | {"bio": "x" * 200_000},
        consent={"marketing": True},
    )
    limits = DEFAULT_LIMITS

    assert identify_problem(state, {"consent": {"marketing": False}}, limits) is None
    assert identify_problem(state, {"bio": "shorter", "t1": None}, limits) is None
    assert identify_problem(state, {"t2": 3}, limits) is None
    grows = identify_problem(state, {"bio": "x" * 200_001}, limits)
    assert grows is not None and "max_user_record_bytes" in grows.reason
    more = identify_problem(state, {"new": 1}, limits)
    assert more is not None and "max_traits" in more.reason
    flag = identify_problem(state, {"consent": {"newsletter": True}}, limits)
    assert flag is not None and "max_user_record_bytes" in flag.reason
