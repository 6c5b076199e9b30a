"""ingest_batch: outcomes, deduplication within and across batches, replay, dead letters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from mailstream.core.ingest_batch import (
    DEAD_LETTERED,
    DEDUPLICATED,
    OUTCOMES,
    PROCESSED,
    SAMPLED_OUT,
    THROTTLED,
    BatchResult,
    IngestSettings,
    add_to_ledger,
    ingest_batch,
)
from mailstream.core.user_state import UserState, split_key, user_key
from mailstream.core.windows import SamplingRule, ThrottleRule
from mailstream.kafka.records import RawMessage, drop_replays
from tests.unit.users_in_memory import UsersTable

NOW_MS = 1_700_000_000_000
MINUTE_MS = 60_000
SETTINGS = IngestSettings(
    max_event_bytes=2048,
    default_tenant="default",
    dedup_window_s=3600.0,
    dedup_max_ids=1000,
)
TOPIC = "mailstream.events"


def event(
    event_id: str,
    user_id: str = "alice",
    event_type: str = "page_view",
    timestamp: int = NOW_MS - 5000,
    **extra: Any,
) -> bytes:
    doc = {
        "event_id": event_id,
        "event_type": event_type,
        "user_id": user_id,
        "timestamp": timestamp,
        **extra,
    }
    return orjson.dumps(doc)


_USER_KEY = object()


def key_for(value: bytes | None) -> bytes | None:
    """The key a well-behaved producer uses: the user_id, or b"alice" when there is none."""
    try:
        return str(orjson.loads(value or b"")["user_id"]).encode()
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return b"alice"


def batch(*values: bytes | None | tuple[bytes | None, Any], partition: int = 0) -> list[RawMessage]:
    """Messages at consecutive offsets, keyed by their user_id unless a (value, key) pair says."""
    out = []
    for offset, item in enumerate(values):
        value, key = item if isinstance(item, tuple) else (item, _USER_KEY)
        if key is _USER_KEY:
            key = key_for(value)
        out.append(RawMessage(TOPIC, partition, 100 + offset, key, value))
    return out


class Store(UsersTable):
    """The users table in memory; ``run`` decides a batch against it and writes it back."""

    def run(self, messages: Sequence[RawMessage], now_ms: int = NOW_MS) -> BatchResult:
        result = ingest_batch(messages, self.load, now_ms, SETTINGS)
        self.write(result.changed)
        return result


def totals(result: BatchResult) -> dict[str, int]:
    """Messages per outcome, whatever the label."""
    out = dict.fromkeys(OUTCOMES, 0)
    for (outcome, _label), n in result.outcomes.items():
        out[outcome] += n
    return out


BATCHES = {
    "all-valid": (
        batch(
            event("e1"),
            event("e2", event_type="order.placed"),
            event("e3", user_id="bob"),
        ),
        {(PROCESSED, "page_view"): 2, (PROCESSED, "order.placed"): 1},
    ),
    "duplicates-in-batch": (
        batch(event("e1"), event("e1"), event("e2"), event("e1")),
        {(PROCESSED, "page_view"): 2, (DEDUPLICATED, "page_view"): 2},
    ),
    "mixed": (
        batch(
            event("e1"),
            b"{not json",
            None,
            (event("e2"), None),
            (event("e3"), b"bob"),
            event("e1"),
            event("e4", event_type="identify", payload={"email": "ADA@example.com"}),
            event("e5", timestamp=1_700_000_000),
            event("e6", event_type="identify", payload={"email": "nope"}),
        ),
        {
            (PROCESSED, "page_view"): 1,
            (PROCESSED, "identify"): 1,
            (DEDUPLICATED, "page_view"): 1,
            (DEAD_LETTERED, "not_json"): 2,
            (DEAD_LETTERED, "missing_key"): 1,
            (DEAD_LETTERED, "key_mismatch"): 1,
            (DEAD_LETTERED, "bad_timestamp"): 1,
            (DEAD_LETTERED, "bad_email"): 1,
        },
    ),
    "all-invalid": (
        batch(b"[]", b"{}", b"x" * 3000),
        {
            (DEAD_LETTERED, "not_object"): 1,
            (DEAD_LETTERED, "missing_field"): 1,
            (DEAD_LETTERED, "too_large"): 1,
        },
    ),
    "empty": ([], {}),
}


@pytest.mark.parametrize(("messages", "outcomes"), BATCHES.values(), ids=BATCHES.keys())
def test_each_message_ends_in_exactly_one_outcome(
    messages: list[RawMessage], outcomes: dict[tuple[str, str], int]
) -> None:
    result = Store().run(messages)

    assert result.outcomes == outcomes
    assert sum(result.outcomes.values()) == len(messages)
    counts = totals(result)
    ledger = result.by_partition.get(0, {})  # every message of these batches is in 0
    assert ledger == {k: v for k, v in counts.items() if v}
    assert len(result.events) == counts[PROCESSED]
    assert len(result.dead_letters) == counts[DEAD_LETTERED]
    # Every dead letter is a different message, and none of them was also processed.
    dead_offsets = {dl.message.offset for dl in result.dead_letters}
    assert len(dead_offsets) == counts[DEAD_LETTERED]


def test_processed_events_are_listed_in_arrival_order() -> None:
    result = Store().run(batch(event("e1"), event("e2", user_id="bob"), event("e3")))

    assert [e.event_id for e in result.events] == ["e1", "e2", "e3"]


def test_a_duplicate_in_the_same_batch_does_not_change_the_state() -> None:
    store = Store()

    store.run(batch(event("e1"), event("e1"), event("e1", event_type="order.placed")))

    alice = store.user("alice")
    assert alice.events == {"page_view": 1}
    assert len(alice.seen) == 1


def test_a_duplicate_in_a_later_batch_is_deduplicated_and_changes_nothing() -> None:
    store = Store()
    store.run(batch(event("e1"), event("e2")))
    before = store.data.copy()

    result = store.run(batch(event("e1"), event("e2")), now_ms=NOW_MS + 10 * MINUTE_MS)

    assert result.outcomes == {(DEDUPLICATED, "page_view"): 2}
    assert result.changed == {}
    assert result.events == []
    assert store.data == before


def test_a_later_batch_mixing_old_and_new_events_applies_only_the_new() -> None:
    store = Store()
    store.run(batch(event("e1"), event("e2")))

    result = store.run(
        batch(event("e2"), event("e3", timestamp=NOW_MS), event("e1")),
        now_ms=NOW_MS + MINUTE_MS,
    )

    assert result.outcomes == {(DEDUPLICATED, "page_view"): 2, (PROCESSED, "page_view"): 1}
    alice = store.user("alice")
    assert alice.events == {"page_view": 3}
    assert alice.last_activity == NOW_MS


REPLAYS = {
    "single-user": batch(event("e1"), event("e2"), event("e3", event_type="order.placed")),
    "identify-then-events": batch(
        event("e1", event_type="identify", payload={"email": "ada@example.com"}),
        event("e2"),
        event("e3", event_type="identify", payload={"consent": {"marketing": True}}),
        event("e4", event_type="identify", payload={"email": None}),
    ),
    "many-users-and-tenants": batch(
        *(event(f"e{i}", user_id=f"user-{i % 7}", tenant_id=f"t{i % 2}") for i in range(40))
    ),
    "mixed-with-dead-letters": BATCHES["mixed"][0],
}


@pytest.mark.parametrize("messages", REPLAYS.values(), ids=REPLAYS.keys())
def test_replaying_a_batch_on_top_of_its_own_result_changes_nothing(
    messages: list[RawMessage],
) -> None:
    store = Store()
    first = store.run(messages)
    after_first = store.data.copy()

    # As after a crash between writing the state and committing the offsets.
    replay = store.run(messages, now_ms=NOW_MS + 5 * MINUTE_MS)

    assert store.data == after_first
    assert replay.changed == {}
    assert replay.events == []
    counts = totals(replay)
    assert counts[PROCESSED] == 0
    assert counts[DEDUPLICATED] == totals(first)[PROCESSED] + totals(first)[DEDUPLICATED]
    assert [(d.message, d.code) for d in replay.dead_letters] == [
        (d.message, d.code) for d in first.dead_letters
    ]


def test_replaying_from_an_earlier_offset_applies_only_what_was_not_applied() -> None:
    messages = batch(*(event(f"e{i}") for i in range(10)))
    store = Store()
    store.run(messages[:6])

    store.run(messages[3:], now_ms=NOW_MS + MINUTE_MS)

    assert store.user("alice").events == {"page_view": 10}


@pytest.mark.parametrize(
    ("key", "code", "reason"),
    [
        pytest.param(None, "missing_key", "message has no key", id="no-key"),
        pytest.param(
            b"bob", "key_mismatch", "message key b'bob' is not the user_id 'alice'", id="other-user"
        ),
        pytest.param(b"ALICE", "key_mismatch", "is not the user_id", id="different-case"),
        pytest.param(b"", "key_mismatch", "is not the user_id", id="empty-key"),
        pytest.param(b"alice ", "key_mismatch", "is not the user_id", id="trailing-space"),
    ],
)
def test_a_message_not_keyed_by_its_user_id_is_dead_lettered(
    key: bytes | None, code: str, reason: str
) -> None:
    messages = batch((event("e1"), key))

    result = Store().run(messages)

    assert result.outcomes == {(DEAD_LETTERED, code): 1}
    assert result.changed == {}
    [dead] = result.dead_letters
    assert dead.code == code
    assert reason in dead.reason
    assert "key every event by its user_id" in dead.reason
    assert dead.message == messages[0]


def test_a_unicode_user_id_matches_its_utf8_key() -> None:
    result = Store().run(batch(event("e1", user_id="ünï:用户")))

    assert totals(result)[PROCESSED] == 1


@pytest.mark.parametrize(
    ("value", "code"),
    [
        pytest.param(b"{oops", "not_json", id="not-json"),
        pytest.param(None, "not_json", id="tombstone"),
        pytest.param(b"x" * (SETTINGS.max_event_bytes + 1), "too_large", id="too-large"),
        pytest.param(b'{"event_id": "e1"}', "missing_field", id="missing-field"),
        pytest.param(event("e1", timestamp="yesterday"), "wrong_type", id="wrong-type"),
        pytest.param(event("e1", tenant_id="a b"), "bad_tenant", id="bad-tenant"),
    ],
)
def test_an_invalid_message_is_dead_lettered_with_the_original_message(
    value: bytes | None, code: str
) -> None:
    original = RawMessage(TOPIC, 3, 4242, b"alice", value)

    result = Store().run([original])

    assert result.outcomes == {(DEAD_LETTERED, code): 1}
    assert result.changed == {}
    [dead] = result.dead_letters
    assert dead.code == code
    assert dead.reason
    assert dead.message == original
    assert (dead.message.topic, dead.message.partition, dead.message.offset) == (TOPIC, 3, 4242)
    assert dead.message.value == value


def test_a_user_touched_several_times_appears_once_in_changed() -> None:
    store = Store()

    result = store.run(
        batch(
            event("e1"),
            event("e2", user_id="bob"),
            event("e3", event_type="identify", payload={"first_name": "Ada"}),
            event("e4"),
        )
    )

    assert sorted(result.changed) == sorted(
        [(0, user_key("default", "alice")), (0, user_key("default", "bob"))]
    )
    alice = result.changed[(0, user_key("default", "alice"))]
    assert alice.events == {"page_view": 2}
    assert alice.traits == {"first_name": "Ada"}
    assert len(alice.seen) == 3
    assert store.loads[(0, user_key("default", "alice"))] == 1


def test_the_same_user_id_in_two_tenants_gives_two_states() -> None:
    store = Store()

    result = store.run(
        batch(
            event("e1", tenant_id="acme"),
            event("e1", tenant_id="globex"),
            event("e2", tenant_id="globex"),
        )
    )

    assert totals(result)[PROCESSED] == 3
    assert sorted(split_key(key) for _partition, key in result.changed) == [
        ("acme", "alice"),
        ("globex", "alice"),
    ]
    assert store.user("alice", "acme").events == {"page_view": 1}
    assert store.user("alice", "globex").events == {"page_view": 2}


def test_events_without_a_tenant_go_to_the_default_tenant() -> None:
    store = Store()

    store.run(batch(event("e1"), event("e2", tenant_id="default")))

    assert list(store.data) == [(0, user_key("default", "alice"))]
    assert store.user("alice").events == {"page_view": 2}


def test_written_states_are_pruned_to_the_dedup_window() -> None:
    store = Store()
    store.run(batch(event("e1")))
    later = NOW_MS + int(SETTINGS.dedup_window_s * 1000) + 10_000

    store.run(batch(event("e2")), now_ms=later)

    seen = store.user("alice").seen
    assert len(seen) == 1
    assert seen.check_and_add("e2", later // 1000) is True


def test_written_states_hold_at_most_dedup_max_ids() -> None:
    settings = IngestSettings(
        max_event_bytes=2048, default_tenant="default", dedup_window_s=3600.0, dedup_max_ids=16
    )

    result = ingest_batch(
        batch(*(event(f"e{i}") for i in range(40))), lambda p, k: None, NOW_MS, settings
    )

    [alice] = result.changed.values()
    assert alice.events == {"page_view": 40}
    assert len(alice.seen) == 16


def test_a_user_is_loaded_once_per_batch_even_when_its_events_are_duplicates() -> None:
    store = Store()
    store.run(batch(event("e1"), event("e2"), event("e3")))
    store.loads.clear()

    store.run(batch(event("e1"), event("e2"), event("e3")), now_ms=NOW_MS + MINUTE_MS)

    assert store.loads[(0, user_key("default", "alice"))] == 1


def test_one_poison_identify_is_dead_lettered_and_the_rest_of_the_batch_goes_on() -> None:
    messages = batch(
        event("e1"),
        event("e2", event_type="identify", payload={"timezone": "America"}),
        event("e3"),
    )

    result = Store().run(messages)

    assert result.outcomes == {(PROCESSED, "page_view"): 2, (DEAD_LETTERED, "bad_timezone"): 1}


def _msgs(*offsets: tuple[int, int]) -> list[RawMessage]:
    return [RawMessage("events", p, o, b"u", b"{}") for p, o in offsets]


@pytest.mark.parametrize(
    ("offsets", "progress", "fresh", "replayed"),
    [
        pytest.param([(0, 5), (0, 6)], {0: None}, [(0, 5), (0, 6)], 0, id="first-batch-ever"),
        pytest.param([(0, 5), (0, 6)], {0: 5}, [(0, 5), (0, 6)], 0, id="contiguous"),
        pytest.param([(0, 3), (0, 4), (0, 5)], {0: 5}, [(0, 5)], 2, id="replay-dropped"),
        pytest.param([(0, 3), (0, 4)], {0: 5}, [], 2, id="all-replayed"),
        # A commit marker (or compaction) between the progress and the batch: not a hole.
        pytest.param([(0, 7), (0, 8)], {0: 5}, [(0, 7), (0, 8)], 0, id="gap-before-batch"),
        pytest.param([(0, 5), (0, 9)], {0: 5}, [(0, 5), (0, 9)], 0, id="gap-inside-batch"),
        pytest.param(
            [(0, 5), (1, 3), (1, 4)], {0: 5, 1: 4}, [(0, 5), (1, 4)], 1, id="partitions-apart"
        ),
        pytest.param([(0, 6), (0, 6)], {0: 5}, [(0, 6)], 1, id="offset-twice-in-a-batch"),
    ],
)
def test_drop_replays_keeps_what_follows_the_progress_gaps_included(
    offsets: list[tuple[int, int]],
    progress: dict[int, int | None],
    fresh: list[tuple[int, int]],
    replayed: int,
) -> None:
    kept, dropped = drop_replays(_msgs(*offsets), progress)
    assert [(m.partition, m.offset) for m in kept] == fresh
    assert dropped == replayed


# ---- sampling and throttling ----------------------------------------------------------

RULED = dataclasses.replace(
    SETTINGS,
    sampling={
        "page_view": SamplingRule(min_interval_ms=10_000),
        "price_seen": SamplingRule(rate=0.0, watch=("price",), threshold=5),
    },
    throttling={"search": ThrottleRule(limit=3, per_ms=MINUTE_MS)},
)


def run_ruled(store: Store, messages: Sequence[RawMessage], now_ms: int = NOW_MS) -> BatchResult:
    reacted: list[str] = []
    result = ingest_batch(
        messages, store.load, now_ms, RULED, lambda state, e: reacted.append(e.event_id)
    )
    store.write(result.changed)
    assert reacted == [e.event_id for e in result.events]  # only processed events react
    return result


def test_a_burst_is_throttled_to_the_limit_and_every_event_is_counted() -> None:
    store = Store()
    burst = [event(f"s{i}", event_type="search", timestamp=NOW_MS - 1000 + i) for i in range(500)]

    result = run_ruled(store, batch(*burst))

    assert result.outcomes == {(PROCESSED, "search"): 3, (THROTTLED, "search"): 497}
    alice = store.user("alice")
    assert alice.events == {"search": 3}
    assert alice.throttle["search"] == [NOW_MS - 1000, NOW_MS - 999, NOW_MS - 998]
    assert len(alice.seen) == 3  # throttled events leave no trace, not even a dedup entry


def test_the_throttle_window_slides_with_event_time() -> None:
    store = Store()
    first = [
        event(f"a{i}", event_type="search", timestamp=NOW_MS - 2 * MINUTE_MS) for i in range(3)
    ]
    run_ruled(store, batch(*first))

    inside = event("b1", event_type="search", timestamp=NOW_MS - MINUTE_MS - 1)
    after = event("b2", event_type="search", timestamp=NOW_MS - MINUTE_MS)
    result = run_ruled(store, batch(inside, after))

    assert result.outcomes == {(THROTTLED, "search"): 1, (PROCESSED, "search"): 1}


def test_min_interval_samples_out_and_writes_nothing() -> None:
    store = Store()
    run_ruled(store, batch(event("p1", timestamp=NOW_MS - 20_000)))
    before = store.data.copy()

    result = run_ruled(store, batch(event("p2", timestamp=NOW_MS - 15_000)))

    assert result.outcomes == {(SAMPLED_OUT, "page_view"): 1}
    assert result.changed == {}
    assert store.data == before
    result = run_ruled(store, batch(event("p3", timestamp=NOW_MS - 10_000)))
    assert result.outcomes == {(PROCESSED, "page_view"): 1}


def test_a_significant_change_is_processed_despite_sampling() -> None:
    store = Store()
    prices = [100, 101, 104, 106, 106, 90]
    messages = batch(
        *(
            event(f"v{i}", event_type="price_seen", payload={"price": p})
            for i, p in enumerate(prices)
        )
    )

    result = run_ruled(store, messages)

    assert [e.payload["price"] for e in result.events] == [100, 106, 90]
    assert result.outcomes == {(PROCESSED, "price_seen"): 3, (SAMPLED_OUT, "price_seen"): 3}


def test_a_replay_of_sampled_events_decides_the_same() -> None:
    settings = dataclasses.replace(SETTINGS, sampling={"page_view": SamplingRule(rate=0.5)})
    messages = batch(*(event(f"r{i}", user_id=f"u{i}") for i in range(200)))

    first = ingest_batch(messages, Store().load, NOW_MS, settings)
    again = ingest_batch(messages, Store().load, NOW_MS + 10 * MINUTE_MS, settings)

    assert [e.event_id for e in first.events] == [e.event_id for e in again.events]
    assert 70 < len(first.events) < 130
    assert first.outcomes[(SAMPLED_OUT, "page_view")] == 200 - len(first.events)


def test_a_future_timestamp_counts_as_now_in_the_windows() -> None:
    store = Store()
    future = event("f1", event_type="search", timestamp=NOW_MS + 3_600_000)

    run_ruled(store, batch(future))

    assert store.user("alice").throttle["search"] == [NOW_MS]


def test_window_state_does_not_grow_with_the_number_of_events() -> None:
    store = Store()
    sizes = []
    for round_ in range(5):
        now = NOW_MS + round_ * 10 * MINUTE_MS
        messages = [
            event(f"x{round_}-{i}", event_type=kind, timestamp=now - 1000 + i, payload={"price": i})
            for i in range(300)
            for kind in ("search", "page_view", "price_seen")
        ]
        run_ruled(store, batch(*messages), now_ms=now)
        alice = store.user("alice")
        # the record without the dedup window, which is bounded by its own settings
        sizes.append(len(alice.encode()) - len(alice.seen.to_bytes()))
    alice = store.user("alice")
    assert len(alice.throttle["search"]) == 3
    assert len(alice.sampling) == 2
    assert max(sizes) - min(sizes) < 40  # the event counters gain a digit or two


def test_each_partition_counts_its_own_outcomes() -> None:
    first = batch(event("e1", "a"), event("e1", "a"), partition=0)
    second = batch(event("e2", "b"), b"{not json", partition=3)
    result = Store().run(first + second)
    assert result.by_partition == {
        0: {PROCESSED: 1, DEDUPLICATED: 1},
        3: {PROCESSED: 1, DEAD_LETTERED: 1},
    }


@pytest.mark.parametrize(
    ("stored", "added", "expected"),
    [
        (None, {PROCESSED: 2}, {PROCESSED: 2}),
        (b'{"processed": 5, "throttled": 1}', {PROCESSED: 2}, {PROCESSED: 7, "throttled": 1}),
        (b'{"processed": 5}', {DEAD_LETTERED: 1}, {PROCESSED: 5, DEAD_LETTERED: 1}),
        (b'{"processed": 5}', {}, {PROCESSED: 5}),
    ],
)
def test_a_ledger_record_adds_a_batchs_counts(
    stored: bytes | None, added: dict[str, int], expected: dict[str, int]
) -> None:
    assert orjson.loads(add_to_ledger(stored, added)) == expected


def remembering(store: Store) -> Any:
    """A loader for one batch decided in parts: a user read once is handed back as is."""
    read: dict[tuple[int, bytes], UserState | None] = {}

    def load(partition: int, key: bytes) -> UserState | None:
        if (partition, key) not in read:
            read[(partition, key)] = store.load(partition, key)
        return read[(partition, key)]

    return load


@pytest.mark.parametrize("part", [1, 2, 3, 7])
@pytest.mark.parametrize(
    ("messages", "settings"),
    [
        (BATCHES["mixed"][0] + BATCHES["duplicates-in-batch"][0], SETTINGS),
        (
            batch(
                *[
                    event(f"s{i}", event_type="search", timestamp=NOW_MS - 1000 + i)
                    for i in range(9)
                ],
                *[event(f"p{i}", timestamp=NOW_MS - 900 + i * 20_000) for i in range(4)],
            ),
            RULED,
        ),
    ],
    ids=["mixed", "ruled"],
)
def test_a_batch_decided_in_parts_decides_as_one(
    messages: list[RawMessage], settings: IngestSettings, part: int
) -> None:
    whole = ingest_batch(messages, Store().load, NOW_MS, settings)
    store = Store()
    load = remembering(store)
    result = BatchResult()
    for start in range(0, len(messages), part):
        result = ingest_batch(messages[start : start + part], load, NOW_MS, settings, into=result)

    assert result.counts == whole.counts
    assert result.by_partition == whole.by_partition
    assert [e.event_id for e in result.events] == [e.event_id for e in whole.events]
    assert {s: st.encode() for s, st in result.changed.items()} == {
        s: st.encode() for s, st in whole.changed.items()
    }
    assert max(store.loads.values(), default=0) == 1  # each user read once for the batch
