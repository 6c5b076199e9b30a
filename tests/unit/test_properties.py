"""Properties of the pure core under hostile input: events, ingest, conditions, templates,
the send policy and the suppression list never fail outside their contract."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from markupsafe import escape

from mailstream.core.conditions import OPERATORS, ROOTS, ConditionError, compile_condition
from mailstream.core.events import (
    IDENTIFY,
    MAX_EVENT_ID,
    MAX_EVENT_TYPE,
    MAX_TIMESTAMP_MS,
    MAX_USER_ID,
    MIN_TIMESTAMP_MS,
    Event,
    Invalid,
    check_traits,
    decode_event,
    valid_tenant,
)
from mailstream.core.ingest_batch import (
    DEAD_LETTERED,
    OUTCOMES,
    PROCESSED,
    IngestSettings,
    ingest_batch,
)
from mailstream.core.user_state import UserState
from mailstream.core.windows import DAY_MS, Cap, QuietHours, SamplingRule, ThrottleRule
from mailstream.kafka.records import RawMessage
from mailstream.suppression.entries import REASON_SCOPES, Suppression, normalise_address, parse_csv
from mailstream.workflows.send_policy import (
    DEFER,
    DROP,
    REASONS,
    SEND,
    Decision,
    PolicySettings,
    decide,
)
from mailstream.workflows.template_files import TemplateError
from mailstream.workflows.template_sandbox import MAX_POWER_BITS, MAX_REPEAT
from mailstream.workflows.templates import Templates

FAST = settings(max_examples=150, deadline=None, database=None)
SLOW = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
YEAR_2100_MS = 4_102_444_800_000

# ---- hostile JSON values -------------------------------------------------------------------

HUGE_INTS = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30, -(10**30)])
# Finite floats and no surrogates, so a document built from these is valid JSON and reaches
# the field checks; NaN, infinities and lone surrogates have strategies of their own.
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | HUGE_INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
JSON_OBJECT = st.dictionaries(st.text(max_size=8), JSON, max_size=5)
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
# Raw tokens that JSON forbids, or that look like a number or a timestamp but are not one.
NUMBER_TOKENS = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "-0",
        "1.7e12",
        "1700000000000.0",
        "17e11",
        "0x1",
        "01",
        "1_000",
        "18446744073709551616",
        "-9223372036854775809",
        "1" * 400,
        "1700000000000",
        '"NaN"',
        '"Infinity"',
        '"1700000000000"',
        "true",
        "null",
    ]
)


def around(limit: int) -> st.SearchStrategy[str]:
    """Strings just under, at and over a length limit, in ASCII and in wide characters."""
    return st.builds(
        lambda n, ch: ch * n, st.integers(limit - 2, limit + 2), st.sampled_from("xé🙂")
    )


HOSTILE_TEXT = st.text(max_size=12) | st.sampled_from(
    ["<script>alert(1)</script>", "{{ 7 * 7 }}", "{% raw %}", "\r\nBcc: x@example.com", "\u202e"]
)
BLANKS = st.sampled_from(["", " ", "\t\n", "\u00a0", "\u2028", "\u3000"])

# ---- 1. decode_event --------------------------------------------------------------------

MAX_BYTES = 8192
DEFAULT_TENANT = "default"
VALID_ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Santiago",
    "America/Havana",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Antarctica/Troll",
    "Factory",
]
BAD_ZONES = [
    "",
    " ",
    ".",
    "/",
    "America",
    "Etc",
    "UTC/",
    "utc",
    " UTC",
    "Europe//Paris",
    "Europe/./Paris",
    "../../etc/passwd",
    "/etc/passwd",
    "Europe/Paris\x00",
    "zone.tab",
    "tzdata.zi",
    "__init__.py",
    "Europe/__init__.py",
    "leapseconds",
    "x" * 300,
]
HOSTILE_EMAILS = st.sampled_from(
    [
        "a@xn--.com",
        "a@xn--a.com",
        "a@-x.com",
        "a@[IPv6:::1]",
        "a@[]",
        '"a b"@x.com',
        "a@x.com\x00",
        "A@EXAMPLE.COM ",
        "a@x..com",
        "a@" + "a" * 64 + ".com",
        "a@" + ("a" * 63 + ".") * 5 + "com",
        "a@x\u200d.com",
        "a@\u0661.com",
        "a@x\u3002com",
        "a@xn--ls8h.la",
        "à@x.com",
        "@",
        "a@b",
        "a" * 65 + "@x.com",
    ]
)
VALID_EMAILS = st.emails() | st.sampled_from(["a@example.com", " A@Example.COM ", "à@x.com"])
EMAIL_VALUES = VALID_EMAILS | HOSTILE_EMAILS | st.text(max_size=30) | JSON
ZONE_VALUES = st.sampled_from(VALID_ZONES + BAD_ZONES) | st.text(max_size=70) | JSON
CONSENT_VALUES = (
    st.dictionaries(
        st.sampled_from(["marketing", "transactional"]) | st.text(max_size=5), JSON_LEAF
    )
    | JSON
)
HOSTILE_TRAITS = st.fixed_dictionaries(
    {},
    optional={
        "email": EMAIL_VALUES,
        "timezone": ZONE_VALUES,
        "consent": CONSENT_VALUES,
        "first_name": JSON,
        "last_name": JSON,
        "locale": JSON,
        "region": JSON,
        "quiet_hours": JSON,
    },
)
VALID_TRAITS = st.fixed_dictionaries(
    {},
    optional={
        "email": VALID_EMAILS | st.none(),
        "timezone": st.sampled_from(VALID_ZONES) | st.none(),
        "consent": st.dictionaries(
            st.sampled_from(["marketing", "transactional"]), st.booleans() | st.none()
        )
        | st.none(),
        "first_name": HOSTILE_TEXT,
        "region": JSON,
        "quiet_hours": JSON,
    },
)
TRAITS = VALID_TRAITS | HOSTILE_TRAITS


def text_up_to(limit: int) -> st.SearchStrategy[str]:
    """Valid for a string field: not blank, at most ``limit`` characters."""
    return st.text(min_size=1, max_size=20).filter(str.strip) | st.builds(
        lambda ch: ch * limit, st.sampled_from("xé🙂")
    )


def bad_text(limit: int) -> st.SearchStrategy[Any]:
    """Invalid for a string field: over the limit, blank, or not a string."""
    return around(limit + 2) | BLANKS | JSON.filter(lambda v: not isinstance(v, str))


# For each field: a strategy for valid values and one for hostile ones.
FIELDS_OF_EVENTS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "event_id": (text_up_to(MAX_EVENT_ID), bad_text(MAX_EVENT_ID)),
    "event_type": (
        st.sampled_from([IDENTIFY, "page_view", "order.placed", "a:b-c_d"])
        | st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True),
        bad_text(MAX_EVENT_TYPE) | st.text(min_size=1, max_size=10),
    ),
    "user_id": (text_up_to(MAX_USER_ID), bad_text(MAX_USER_ID)),
    "timestamp": (
        st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)
        | st.sampled_from([MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS]),
        st.sampled_from([MIN_TIMESTAMP_MS - 1, MAX_TIMESTAMP_MS + 1, 1_700_000_000, 0, -1])
        | st.integers(-(2**70), 2**70)
        | HUGE_INTS
        | st.floats(allow_nan=False, allow_infinity=False)
        | JSON,
    ),
    "payload": (JSON_OBJECT, JSON.filter(lambda v: v is not None and not isinstance(v, dict))),
    "metadata": (JSON_OBJECT | st.none(), JSON.filter(lambda v: not isinstance(v, dict | None))),
    "tenant_id": (
        st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True) | st.none(),
        st.sampled_from(["a\x1fb", "é", "", "a" * 65, "a b"]) | JSON,
    ),
}
OPTIONAL_FIELDS = ("metadata", "tenant_id")


@st.composite
def event_documents(draw: st.DrawFn) -> dict[str, Any]:
    """An event document with none, one or a few fields made hostile or left out."""
    hostile = draw(st.sets(st.sampled_from(sorted(FIELDS_OF_EVENTS)), max_size=2))
    doc: dict[str, Any] = {}
    for name, (valid, bad) in FIELDS_OF_EVENTS.items():
        if name in hostile:
            if draw(st.booleans()) and name not in OPTIONAL_FIELDS:
                continue  # missing
            doc[name] = draw(bad)
        elif name not in OPTIONAL_FIELDS or draw(st.booleans()):
            doc[name] = draw(valid)
    if doc.get("event_type") == IDENTIFY and "payload" not in hostile:
        doc["payload"] = draw(TRAITS)
    doc.update(draw(st.dictionaries(st.text(max_size=6), JSON, max_size=2)))
    return doc


def serialise(doc: Any, ascii_only: bool) -> bytes:
    # The standard library rather than orjson: it writes integers past 64 bits, NaN and
    # lone surrogates, all of which a hostile producer could send.
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def assert_decoded_well(result: Event | Invalid, raw: bytes | None, max_bytes: int) -> None:
    """The contract of decode_event: an Invalid that says why, or an Event that holds."""
    event(f"decoded: {result.code if isinstance(result, Invalid) else 'event'}")
    if isinstance(result, Invalid):
        assert isinstance(result.code, str) and result.code
        assert isinstance(result.reason, str) and result.reason.strip()
        return
    assert isinstance(result, Event)
    assert raw is not None and len(raw) <= max_bytes
    for value, limit in (
        (result.event_id, MAX_EVENT_ID),
        (result.event_type, MAX_EVENT_TYPE),
        (result.user_id, MAX_USER_ID),
    ):
        assert isinstance(value, str) and value.strip() and len(value) <= limit
    assert all(ch.isascii() and (ch.isalnum() or ch in "_.:-") for ch in result.event_type)
    assert type(result.timestamp) is int
    assert MIN_TIMESTAMP_MS <= result.timestamp <= MAX_TIMESTAMP_MS
    assert isinstance(result.tenant_id, str) and valid_tenant(result.tenant_id)
    assert isinstance(result.payload, dict) and isinstance(result.metadata, dict)
    if result.event_type == IDENTIFY:
        assert check_traits(result.payload) is None


def decode(raw: bytes | None, max_bytes: int = MAX_BYTES) -> Event | Invalid:
    return decode_event(raw, max_bytes=max_bytes, default_tenant=DEFAULT_TENANT)


@FAST
@given(
    raw=st.none()
    | st.binary(max_size=300)
    | st.text(max_size=200).map(str.encode)
    | SURROGATES.map(lambda s: s.encode("utf-8", "surrogatepass")),
    max_bytes=st.sampled_from([MAX_BYTES, MAX_BYTES, MAX_BYTES, 64, 0]),
)
def test_decode_event_on_arbitrary_bytes_returns_event_or_invalid(
    raw: bytes | None, max_bytes: int
) -> None:
    assert_decoded_well(decode(raw, max_bytes), raw, max_bytes)


@FAST
@given(
    doc=st.one_of(event_documents(), event_documents(), event_documents(), JSON),
    ascii_only=st.booleans(),
    max_bytes=st.sampled_from([MAX_BYTES, MAX_BYTES, MAX_BYTES, 10**6, 64]),
)
def test_decode_event_on_hostile_json_documents_returns_event_or_invalid(
    doc: Any, ascii_only: bool, max_bytes: int
) -> None:
    raw = serialise(doc, ascii_only)
    assert_decoded_well(decode(raw, max_bytes), raw, max_bytes)


@FAST
@given(
    doc=event_documents(),
    field=st.sampled_from(["event_id", "event_type", "user_id", "timestamp", "payload"]),
    token=NUMBER_TOKENS | SURROGATES.map(json.dumps) | st.just('"\\ud800"'),
)
def test_decode_event_rejects_nan_and_surrogates_without_raising(
    doc: dict[str, Any], field: str, token: str
) -> None:
    doc[field] = "\x00placeholder\x00"
    raw = serialise(doc, ascii_only=True).replace(b'"\\u0000placeholder\\u0000"', token.encode())
    assert_decoded_well(decode(raw), raw, MAX_BYTES)


@FAST
@given(
    depth=st.integers(1, 3000),
    shape=st.sampled_from(["list", "object", "string"]),
    where=st.sampled_from(["payload", "metadata", "event_id", "document"]),
)
def test_decode_event_on_deeply_nested_or_long_values_returns_event_or_invalid(
    depth: int, shape: str, where: str
) -> None:
    nested = {
        "list": "[" * depth + "]" * depth,
        "object": '{"a":' * depth + "1" + "}" * depth,
        "string": json.dumps("🙂" * depth * 50),
    }[shape]
    if where == "document":
        raw = nested.encode()
    else:
        doc = {"event_id": "e1", "event_type": "t", "user_id": "u1", "timestamp": NOW_MS}
        doc[where] = "\x00placeholder\x00"
        raw = orjson.dumps(doc).replace(b'"\\u0000placeholder\\u0000"', nested.encode())
    assert_decoded_well(decode(raw, 10**6), raw, 10**6)


@FAST
@given(doc=event_documents(), ascii_only=st.booleans())
def test_a_decoded_event_decodes_again_to_the_same_event(doc: Any, ascii_only: bool) -> None:
    first = decode(serialise(doc, ascii_only))
    if isinstance(first, Invalid):
        return
    again = decode(
        orjson.dumps(
            {
                "event_id": first.event_id,
                "event_type": first.event_type,
                "user_id": first.user_id,
                "timestamp": first.timestamp,
                "tenant_id": first.tenant_id,
                "payload": first.payload,
                "metadata": first.metadata,
            }
        )
    )
    assert again == first


# ---- 2. ingest_batch ---------------------------------------------------------------------

USERS = ["alice", "bob", "zoë", "alice", "bob", " ", "u" * 257]
INGEST_TYPES = [IDENTIFY, IDENTIFY, "view", "view", "buy", "buy", "bad type"]


@st.composite
def raw_messages(draw: st.DrawFn) -> RawMessage:
    """An event for a few users (ids repeat, so dedup happens), garbage or a tombstone."""
    kind = draw(st.sampled_from(["event"] * 4 + ["document", "garbage", "tombstone"]))
    user = draw(st.sampled_from(USERS))
    value: bytes | None
    if kind == "event":
        event_type = draw(st.sampled_from(INGEST_TYPES))
        doc: dict[str, Any] = {
            "event_id": draw(st.sampled_from(["e1", "e2", "e3", "e4", "e5"])),
            "event_type": event_type,
            "user_id": user,
            "timestamp": NOW_MS + draw(st.integers(-DAY_MS, DAY_MS)),
            "payload": draw(
                TRAITS
                if event_type == IDENTIFY
                else st.fixed_dictionaries({}, optional={"amount": JSON, "x": JSON})
            ),
        }
        if draw(st.booleans()):
            doc["tenant_id"] = draw(st.sampled_from(["acme", "acme", "other", "bad tenant"]))
        value = serialise(doc, draw(st.booleans()))
    elif kind == "document":
        value = serialise(draw(event_documents()), draw(st.booleans()))
    elif kind == "garbage":
        value = draw(st.binary(max_size=40))
    else:
        value = None
    key: bytes | None = user.encode()
    if draw(st.sampled_from([False] * 4 + [True])):  # one in five: no key, or not the user's
        key = draw(st.none() | st.binary(max_size=6))
    partition = draw(st.integers(0, 2))
    return RawMessage("events", partition, draw(st.integers(0, 10**6)), key, value)


INGEST_SETTINGS = st.builds(
    IngestSettings,
    max_event_bytes=st.sampled_from([200, 4096]),
    default_tenant=st.just(DEFAULT_TENANT),
    dedup_window_s=st.sampled_from([0.0, 60.0, 86_400.0]),
    dedup_max_ids=st.integers(0, 4),
    sampling=st.fixed_dictionaries(
        {},
        optional={
            "view": st.builds(
                SamplingRule,
                rate=st.floats(0, 1),
                min_interval_ms=st.integers(0, DAY_MS),
                watch=st.sampled_from([None, ("amount",), ("x", "y")]),
                threshold=st.floats(0, 10),
            )
        },
    ),
    throttling=st.fixed_dictionaries(
        {}, optional={"buy": st.builds(ThrottleRule, st.integers(1, 3), st.integers(1, DAY_MS))}
    ),
)


def assert_batch_accounted(result: Any, messages: list[RawMessage]) -> None:
    assert sum(result.outcomes.values()) == len(messages)
    assert {outcome for outcome, _ in result.outcomes} <= set(OUTCOMES)
    dead = sum(n for (outcome, _), n in result.outcomes.items() if outcome == DEAD_LETTERED)
    assert len(result.dead_letters) == dead
    assert all(letter.code and letter.reason for letter in result.dead_letters)
    processed = sum(n for (outcome, _), n in result.outcomes.items() if outcome == PROCESSED)
    assert len(result.events) == len(result.reactions) == processed


@SLOW
@given(
    first=st.lists(raw_messages(), max_size=12),
    second=st.lists(raw_messages(), max_size=12),
    ingest=INGEST_SETTINGS,
)
def test_ingest_batch_gives_every_message_one_outcome_and_states_round_trip(
    first: list[RawMessage], second: list[RawMessage], ingest: IngestSettings
) -> None:
    stored: dict[tuple[int, bytes], bytes] = {}

    def load(partition: int, key: bytes) -> UserState | None:
        raw = stored.get((partition, key))
        return UserState.decode(raw) if raw is not None else None

    for now, messages in ((NOW_MS, first), (NOW_MS + DAY_MS // 2, second)):
        result = ingest_batch(messages, load, now, ingest, react=lambda state, decoded: None)
        assert_batch_accounted(result, messages)
        for outcome, _ in result.outcomes:
            event(f"ingest: {outcome}")
        for slot, state in result.changed.items():
            encoded = state.encode()
            assert UserState.decode(encoded).encode() == encoded
            stored[slot] = encoded


# ---- 3. conditions -----------------------------------------------------------------------

# Path parts that hit the scope's keys and list indexes. Digits are ASCII here: other
# characters str.isdigit() accepts are the subject of their own (failing) test below.
PARTS = st.sampled_from(["a", "b", "items", "0", "1", "9", "-1", "10"]) | st.text(
    st.characters(codec="ascii", exclude_characters="."), min_size=1, max_size=3
)
FIELDS = st.builds(
    lambda root, parts: ".".join([root, *parts]),
    st.sampled_from(ROOTS),
    st.lists(PARTS, min_size=1, max_size=3),
)
SCOPE_LEAF = (
    JSON_LEAF
    | st.sampled_from([float("inf"), float("-inf"), float("nan"), 10**400, -(10**400), True])
    | st.floats()
)
SCOPE_VALUE = st.recursive(
    SCOPE_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "items", "0", "1"]), inner, max_size=4)
    ),
    max_leaves=15,
)
SCOPES = st.fixed_dictionaries(
    {}, optional={root: SCOPE_VALUE for root in ROOTS}
) | st.dictionaries(st.sampled_from(ROOTS), SCOPE_VALUE)
ORDERED = st.integers() | st.floats() | st.sampled_from([10**400, -(10**400)]) | st.text(max_size=4)


@st.composite
def leaf_conditions(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(OPERATORS))
    spec: dict[str, Any] = {"field": draw(FIELDS), "op": op}
    if op in ("in", "not_in"):
        spec["value"] = draw(st.lists(SCOPE_VALUE, max_size=4))
    elif op in ("gt", "gte", "lt", "lte"):
        spec["value"] = draw(ORDERED)
    elif op == "exists":
        if draw(st.booleans()):
            spec["value"] = draw(st.booleans())
    else:
        spec["value"] = draw(SCOPE_VALUE)
    if op == "eq" and draw(st.booleans()):
        del spec["op"]  # eq is the default
    return spec


CONDITIONS = st.recursive(
    leaf_conditions(),
    lambda inner: st.builds(
        lambda kind, items: {kind: items},
        st.sampled_from(["all", "any"]),
        st.lists(inner, min_size=1, max_size=4),
    ),
    max_leaves=8,
)


@FAST
@given(spec=CONDITIONS, scope=SCOPES)
def test_a_compiled_condition_on_a_hostile_scope_returns_a_bool(
    spec: dict[str, Any], scope: dict[str, Any]
) -> None:
    condition = compile_condition(spec)
    result = condition(scope)
    assert type(result) is bool
    event(f"condition: {result}")
    assert condition(scope) is result
    if "all" in spec or "any" in spec:
        children = [compile_condition(c)(scope) for c in next(iter(spec.values()))]
        assert result == (all(children) if "all" in spec else any(children))


@FAST
@given(field=FIELDS, value=SCOPE_VALUE, values=st.lists(SCOPE_VALUE, max_size=4), scope=SCOPES)
def test_ne_and_not_in_are_the_negations_of_eq_and_in(
    field: str, value: Any, values: list[Any], scope: dict[str, Any]
) -> None:
    def check(op: str, operand: Any) -> bool:
        return compile_condition({"field": field, "op": op, "value": operand})(scope)

    assert check("ne", value) is not check("eq", value)
    assert check("not_in", values) is not check("in", values)


SPEC_KEYS = st.sampled_from(["field", "op", "value", "all", "any"]) | st.text(max_size=4)
SPEC_LEAF = (
    JSON_LEAF
    | st.sampled_from(OPERATORS)
    | FIELDS
    | st.sampled_from(["event", "user.", ".a", "event..a", "other.a"])
)
ARBITRARY_SPECS = st.recursive(
    SPEC_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SPEC_KEYS, inner, max_size=3),
    max_leaves=10,
)


@FAST
@given(spec=ARBITRARY_SPECS)
def test_compile_condition_on_arbitrary_specs_raises_only_condition_error(spec: Any) -> None:
    try:
        condition = compile_condition(spec)
    except ConditionError as exc:
        assert str(exc).startswith("where")
    else:
        assert type(condition({})) is bool


@pytest.mark.parametrize(
    "part", ["²", "①", "9" * 5000], ids=["superscript", "circled", "too-many-digits"]
)
def test_a_path_part_that_is_digits_but_not_a_number_does_not_raise(part: str) -> None:
    condition = compile_condition({"field": f"event.tags.{part}", "op": "exists"})
    assert condition({"event": {"tags": ["vip", "new"]}}) is False


# ---- 4. templates ------------------------------------------------------------------------

LINE_BREAKS = set("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
VALUES_TEMPLATE = (
    "{% block subject %}Hi {{ user.first_name }} {{ event.title }}{% endblock %}\n"
    "{% block text %}{{ user.first_name }} {{ context.note }}{% endblock %}\n"
    "{% block html %}<p>{{ user.first_name }}</p><p>{{ event.title }}</p>"
    "<p>{{ context.note }}</p>{% endblock %}\n"
)
INJECTIONS = st.sampled_from(
    [
        "<script>alert(1)</script>",
        "<SCRIPT src=//evil.example>",
        "<img src=x onerror=alert(1)>",
        "javascript:alert(1)",
        "{{ 7 * 7 }}",
        "{{ user.email }}",
        "{% for x in [1, 2] %}{{ x }}{% endfor %}",
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{# comment #}",
        "{% raw %}",
        "{% endraw %}",
        "}}{{",
        "%}{%",
        "\r\nBcc: victim@example.com",
        "\n",
        "\u2028",
        "\x85",
        "\x00",
        "\u202e",
        "&amp;&lt;",
        "\"'`",
        "<!--",
        "]]>",
        "é\u0301🙂",
        "x" * 20_000,
    ]
)
HOSTILE_STRINGS = st.lists(INJECTIONS | st.text(max_size=10), max_size=4).map("".join)
TEMPLATE_VALUES = HOSTILE_STRINGS | HOSTILE_STRINGS | JSON


@pytest.fixture(scope="module")
def value_templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    directory = tmp_path_factory.mktemp("templates")
    (directory / "t.j2").write_text(VALUES_TEMPLATE, encoding="utf-8")
    return Templates(directory)


@FAST
@given(
    first_name=TEMPLATE_VALUES,
    title=TEMPLATE_VALUES,
    note=TEMPLATE_VALUES,
    locale=st.none() | st.text(max_size=12) | st.sampled_from(["fr-CA", "../t", "-", "\x00"]),
)
def test_hostile_values_render_literally_and_escaped(
    value_templates: Templates, first_name: Any, title: Any, note: Any, locale: str | None
) -> None:
    user = {"email": "a@example.com", "first_name": first_name}
    subject = f"Hi {first_name} {title}".strip()
    try:
        rendered = value_templates.render(
            "t", user=user, event={"title": title}, context={"note": note}, locale=locale
        )
    except TemplateError as exc:
        event("template: line break in subject")
        assert "the subject would contain a line break" in exc.reason
        assert LINE_BREAKS & set(subject)
        return
    assert rendered.subject == subject
    assert not LINE_BREAKS & set(rendered.subject)
    # Values come out as they went in: any Jinja syntax in them is text, not code.
    assert rendered.text == f"{first_name} {note}".strip()
    assert (
        rendered.html == f"<p>{escape(first_name)}</p><p>{escape(title)}</p><p>{escape(note)}</p>"
    )
    assert "<script" not in rendered.html.lower()


@FAST
@given(
    name=(
        st.text(max_size=12) | st.sampled_from(["_t", "../t", "t.j2", "T", " t", "t\x00"])
    ).filter(lambda name: name != "t")
)
def test_unknown_template_names_raise_template_error(value_templates: Templates, name: str) -> None:
    with pytest.raises(TemplateError):
        value_templates.render(name, user={"email": "a@example.com"})


FRAGMENTS = st.sampled_from(
    [
        "{{",
        "}}",
        "{%",
        "%}",
        "{#",
        "#}",
        "{%-",
        "-%}",
        " block ",
        " endblock ",
        "subject",
        "text",
        "html",
        " extends ",
        " include ",
        " import ",
        " from ",
        " as ",
        " if ",
        " endif ",
        " for ",
        " in ",
        " endfor ",
        " set ",
        " macro ",
        " endmacro ",
        " raw ",
        " endraw ",
        "user",
        "event",
        "context",
        "locale",
        "items",
        ".",
        "|",
        "(",
        ")",
        "[",
        "]",
        "'",
        '"',
        "__class__",
        "__mro__",
        "__subclasses__",
        "__globals__",
        "__init__",
        "cycler",
        "joiner",
        "namespace",
        "self",
        "super()",
        "attr",
        "format",
        "'t.j2'",
        "'_x.j2'",
        "'../t.j2'",
        "'/etc/passwd'",
        "1",
        "0",
        "99",
        "*",
        "**",
        "+",
        "~",
        "=",
        ",",
        "\n",
        " ",
    ]
)
SOURCES = st.lists(FRAGMENTS | st.text(max_size=4), max_size=30).map("".join)
# What only an escape could print: the sandbox lets through class and method reprs.
LEAK_MARKERS = ("<module", "<function", "<code object", "<frame", "__builtins__", "mappingproxy")


def render_source(source: bytes, user: dict[str, Any]) -> tuple[Any, list[TemplateError]]:
    """Render a one-file template directory: the Rendered (or the TemplateError) and check()."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "t.j2").write_bytes(source)
        (Path(directory) / "_x.j2").write_bytes(b"{% macro m() %}x{% endmacro %}")
        templates = Templates(directory)
        try:
            outcome: Any = templates.render("t", user=user, event={"a": [1]}, context={})
        except TemplateError as exc:
            outcome = exc
        return outcome, templates.check()


@SLOW
@given(
    body=SOURCES,
    wrap=st.booleans(),
    undecodable=st.sampled_from([False] * 9 + [True]),
    first_name=HOSTILE_STRINGS,
)
def test_arbitrary_template_source_renders_or_raises_template_error(
    body: str, wrap: bool, undecodable: bool, first_name: str
) -> None:
    source = (
        "{% block subject %}S{% endblock %}{% block text %}" + body + "{% endblock %}"
        "{% block html %}" + body + "{% endblock %}"
        if wrap
        else body
    )
    raw = source.encode("utf-8") + (b"\xff\xfe" if undecodable else b"")
    outcome, problems = render_source(raw, {"email": "a@example.com", "first_name": first_name})
    assert all(isinstance(problem, TemplateError) for problem in problems)
    event(f"source: {'error' if isinstance(outcome, TemplateError) else 'rendered'}")
    if isinstance(outcome, TemplateError):
        return
    for part in (outcome.subject, outcome.text, outcome.html):
        for marker in LEAK_MARKERS:
            assert marker not in part or marker in source


SANDBOX_ATTACKS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ ''|attr('__class__') }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ user.__class__ }}",
    "{{ user.items.__self__ }}",
    "{{ user.get.__globals__ }}",
    "{{ user.first_name.upper.__self__ }}",
    "{{ '{0.__class__}'.format(user) }}",
    "{{ '{a.__class__.__init__.__globals__}'.format(a=user) }}",
    "{{ '{first_name.__class__}'.format_map(user) }}",
    "{{ '%s' % user.__class__ }}",
    "{{ dict.mro() }}",
    "{% set x = user.update({'email': 'evil@example.com'}) %}{{ x }}",
    "{{ user.pop('email') }}",
    "{{ [1].append(2) }}",
    "{{ range(10 ** 9) | list }}",
    "{{ 'a' * 10 ** 9 }}",
    "{{ 10 ** (10 ** 10) }}",
    "{% include '/etc/passwd' %}",
    "{% include '../../../../etc/passwd' %}",
    "{% include user.first_name %}",
    "{% include 't.j2' %}",
    "{% import 't.j2' as me %}{{ me }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
]


@pytest.mark.parametrize("expression", SANDBOX_ATTACKS)
def test_sandbox_attacks_raise_template_error(expression: str) -> None:
    source = (
        "{% block subject %}S{% endblock %}{% block text %}"
        + expression
        + "{% endblock %}{% block html %}h{% endblock %}"
    )
    outcome, _ = render_source(
        source.encode(), {"email": "a@example.com", "first_name": "../../etc/passwd"}
    )
    assert isinstance(outcome, TemplateError), outcome


OVER_REPEAT = MAX_REPEAT + 1


@pytest.mark.parametrize(
    "expression",
    [
        f"{{{{ 'x'.ljust({OVER_REPEAT}) | length }}}}",
        f"{{{{ 'x'.center({OVER_REPEAT}) | length }}}}",
        f"{{{{ '{{:>{OVER_REPEAT}}}'.format('') | length }}}}",
        f"{{{{ '%{OVER_REPEAT}s' | format('') | length }}}}",
        f"{{% set n = 2 ** {MAX_POWER_BITS // 2} %}}{{{{ (n * n * n * n).bit_length() }}}}",
    ],
    ids=["ljust", "center", "format-width", "percent-width", "int-product"],
)
def test_template_expressions_cannot_build_past_the_limits(expression: str) -> None:
    source = (
        "{% block subject %}S{% endblock %}{% block text %}"
        + expression
        + "{% endblock %}{% block html %}h{% endblock %}"
    )
    outcome, _ = render_source(source.encode(), {"email": "a@example.com"})
    assert isinstance(outcome, TemplateError), outcome


# ---- 5. policy.decide --------------------------------------------------------------------

QUIET_TRAITS = (
    st.sampled_from(
        [
            "22:00-07:00",
            "07:00-22:00",
            "00:00-00:00",
            "23:59:59-00:00",
            "24:00-07:00",
            "22:60-07:00",
            "-",
            "",
            "22:00",
            "aa-bb",
            "22:00-07:00-01:00",
            "\u00b2\u00b2:00-07:00",
            "\u0662\u0662:\u0660\u0660-07:00",
            " 22:00 - 07:00 ",
        ]
    )
    | st.text(max_size=20)
    | JSON
)
REGIONS = st.sampled_from(["EU", "eu", "US", "İ", ""]) | JSON_LEAF
CAPS = st.lists(
    st.builds(Cap, st.integers(1, 3), st.sampled_from([1, 60_000, 3_600_000, DAY_MS, 7 * DAY_MS]))
    | st.builds(Cap, st.integers(1, 3), st.none(), st.sampled_from(["day", "week"])),
    max_size=3,
)
POLICY_SETTINGS = st.builds(
    PolicySettings,
    consent=st.sampled_from(["opt_in", "opt_out"]),
    consent_by_region=st.just({"eu": "opt_in", "us": "opt_out"}),
    caps=CAPS.map(tuple),
    when_capped=st.sampled_from(["defer", "drop"]),
    quiet=st.none() | st.builds(QuietHours, st.times(), st.times()),
    default_tz=st.sampled_from(VALID_ZONES).map(ZoneInfo),
)
LISTED = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.builds(Suppression, st.sampled_from(sorted(REASON_SCOPES)), st.just("list"), st.just(0)),
)


# Instants near time zone changes: Apia skipping 2011-12-30, Santiago changing at
# midnight, Havana at 00:00/01:00, Lord Howe by half an hour, Paris and New York.
ZONE_CHANGES_MS = [
    1_325_239_200_000,  # 2011-12-30T10:00Z, Pacific/Apia
    1_712_458_800_000,  # 2024-04-07T03:00Z, America/Santiago (back)
    1_725_768_000_000,  # 2024-09-08T04:00Z, America/Santiago (forward)
    1_710_046_800_000,  # 2024-03-10T05:00Z, America/Havana and New York (forward)
    1_730_610_000_000,  # 2024-11-03T05:00Z, America/Havana and New York (back)
    1_712_415_600_000,  # 2024-04-06T15:00Z, Australia/Lord_Howe (back)
    1_774_746_000_000,  # 2026-03-29T01:00Z, Europe/Paris (forward)
    1_792_890_000_000,  # 2026-10-25T01:00Z, Europe/Paris (back)
]
NOWS = st.integers(MIN_TIMESTAMP_MS, YEAR_2100_MS) | st.builds(
    lambda change, offset: change + offset,
    st.sampled_from(ZONE_CHANGES_MS),
    st.integers(-2 * DAY_MS, 2 * DAY_MS) | st.integers(-3, 3).map(lambda h: h * 3_600_000),
)


@st.composite
def policy_cases(draw: st.DrawFn) -> tuple[UserState, int]:
    now = draw(NOWS)
    traits = draw(
        st.fixed_dictionaries(
            {},
            optional={"timezone": ZONE_VALUES, "region": REGIONS, "quiet_hours": QUIET_TRAITS},
        )
    )
    if draw(st.sampled_from([True] * 4 + [False])):
        traits["email"] = "alice@example.com"
    elif draw(st.booleans()):
        traits["email"] = draw(st.just("") | JSON_LEAF)
    # Stored consent is true or false; a hostile one holds anything.
    consent: Any = draw(
        st.dictionaries(st.sampled_from(["transactional", "x"]), JSON_LEAF)
        | st.fixed_dictionaries({"marketing": st.sampled_from([True, False, None]) | JSON_LEAF})
    )
    user = UserState("acme", "alice", traits=traits, consent=consent)
    if draw(st.sampled_from([False] * 3 + [True])):  # one user in four has suppressions
        reasons = draw(st.sets(st.sampled_from(sorted(REASON_SCOPES)), min_size=1, max_size=2))
        for reason in reasons:
            user.suppressions[reason] = Suppression(reason, "test", now - DAY_MS)
    user.sent = sorted(now + d for d in draw(st.lists(st.integers(-10 * DAY_MS, DAY_MS))))
    return user, now


@FAST
@given(
    case=policy_cases(),
    policy=POLICY_SETTINGS,
    category=st.sampled_from(["transactional", "marketing"]),
    listed=LISTED,
)
def test_decide_never_raises_and_keeps_its_promises(
    case: tuple[UserState, int],
    policy: PolicySettings,
    category: str,
    listed: Suppression | None,
) -> None:
    user, now = case
    before = copy.deepcopy(user)
    decision = decide(policy, user, category, now, listed)
    assert isinstance(decision, Decision)
    assert decision.action in (SEND, DROP, DEFER)
    assert decision.reason in REASONS
    event(f"decide: {decision.action} {decision.reason}")
    assert decide(policy, user, category, now, listed) == decision
    assert (user.traits, user.consent, user.sent) == (before.traits, before.consent, before.sent)
    if category == "transactional":
        assert decision.action != DEFER
    if decision.action == DEFER:
        assert decision.until is not None and decision.until > now
    else:
        assert decision.until is None
    if "hard_bounce" in user.suppressions:
        assert decision.action == DROP
    blocked = [*user.suppressions.values(), *([listed] if listed is not None else [])]
    if any(entry.blocks(category) for entry in blocked):
        assert decision.action == DROP


@FAST
@given(
    now=NOWS,
    timezone=st.sampled_from(VALID_ZONES) | ZONE_VALUES,
    quiet_trait=st.none() | QUIET_TRAITS,
    offsets=st.lists(st.integers(-8 * DAY_MS, 0), max_size=6),
    policy=POLICY_SETTINGS,
)
def test_a_deferred_marketing_send_is_due_when_it_could_go(
    now: int, timezone: Any, quiet_trait: Any, offsets: list[int], policy: PolicySettings
) -> None:
    traits = {"email": "alice@example.com", "timezone": timezone}
    if quiet_trait is not None:
        traits["quiet_hours"] = quiet_trait
    user = UserState("acme", "alice", traits=traits, consent={"marketing": True})
    # Sends made so far; one dated after ``now`` (another worker's clock) is the exception
    # to "counts only fall as time passes" that caps_free_at relies on.
    user.sent = sorted(now + d for d in offsets)
    decision = decide(policy, user, "marketing", now)
    event(f"marketing: {decision.action} {decision.reason}")
    assert decision.action != DROP or decision.reason == "capped"
    if decision.action == DEFER:
        assert decision.reason in ("capped", "quiet_hours")
        assert decision.until is not None and decision.until > now
        # Nothing was sent meanwhile, so at ``until`` neither a cap nor quiet hours hold it.
        assert decide(policy, user, "marketing", decision.until) == Decision(SEND, "ok")


# ---- 6. suppression addresses and CSV ----------------------------------------------------

ADDRESSES = (
    st.text(max_size=40)
    | st.emails()
    | HOSTILE_EMAILS
    | st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=15), st.text(max_size=15))
    | st.builds(lambda a: f" {a.upper()}\t", st.emails())
)


@FAST
@given(raw=ADDRESSES)
def test_normalise_address_is_lower_stripped_with_one_at_sign(raw: str) -> None:
    address = normalise_address(raw)
    event(f"address: {'none' if address is None else 'valid'}")
    if address is None:
        return
    assert address == address.lower() == address.strip()
    assert address.count("@") == 1
    assert 0 < len(address) <= 254
    assert normalise_address(address) == address


@FAST
@given(text=st.text(max_size=300) | st.lists(ADDRESSES, max_size=8).map("\n".join))
def test_parse_csv_on_arbitrary_text_never_raises(text: str) -> None:
    rows, errors = parse_csv(text)
    assert all(error.startswith("line ") for error in errors)
    assert len({address for address, _ in rows}) == len(rows)
    for address, reason in rows:
        assert normalise_address(address) == address
        assert reason in REASON_SCOPES


# Cells without quotes or line breaks, so each CSV record is exactly one line.
CELL = st.text(st.characters(exclude_characters='",\r\n\x00'), max_size=12)
CSV_CELLS = (
    CELL
    | ADDRESSES.filter(lambda a: not set(a) & set('",\r\n\x00'))
    | st.sampled_from(["email", " Email ", "reason", "hard_bounce", "UNSUBSCRIBE", "nonsense", ""])
)
CSV_LINES = st.lists(st.lists(CSV_CELLS, max_size=3).map(",".join), max_size=10)


@FAST
@given(lines=CSV_LINES, crlf=st.booleans(), bom=st.booleans())
def test_parse_csv_accounts_for_every_non_blank_line(
    lines: list[str], crlf: bool, bom: bool
) -> None:
    newline = "\r\n" if crlf else "\n"
    text = ("\ufeff" if bom else "") + newline.join(lines)
    rows, errors = parse_csv(text)
    # As parse_csv reads them: a byte order mark at the start is not part of the first cell.
    records = text.removeprefix("\ufeff").split(newline)
    cells = [[cell.strip() for cell in record.split(",")] for record in records]
    non_blank = [n for n, row in enumerate(cells, 1) if any(row)]
    names = [cell.lower() for cell in cells[non_blank[0] - 1]] if non_blank else []
    header = "email" in names
    column = names.index("email") if header else 0
    data_lines = non_blank[1:] if header else non_blank
    error_lines = [int(error.split(":")[0].removeprefix("line ")) for error in errors]
    # Every data line is an error (named once) or a row; a later row replaces an earlier
    # one for the same address, in the later one's place.
    assert sorted(set(error_lines)) == error_lines
    assert set(error_lines) <= set(data_lines)
    good = [cells[n - 1] for n in data_lines if n not in error_lines]
    addresses = [normalise_address(row[column] if column < len(row) else "") for row in good]
    assert None not in addresses
    event(f"csv: {'header' if header else 'no header'}, rows {bool(rows)}, errors {bool(errors)}")
    assert [address for address, _ in rows] == list(dict.fromkeys(reversed(addresses)))[::-1]
