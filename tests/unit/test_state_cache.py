"""The decoded-state cache reuses a state only while the store holds exactly what was
written with it."""

from __future__ import annotations

from mailstream.core.user_state import UserState
from mailstream.state.user_cache import StateCache


def state(user: str, **traits: str) -> UserState:
    s = UserState(tenant_id="t", user_id=user)
    s.traits.update(traits)
    return s


def test_a_written_state_is_reused_while_the_bytes_are_unchanged() -> None:
    cache = StateCache(10)
    s = state("u1", email="a@example.com")
    raw = s.encode()
    cache.written((0, b"u1"), raw, s)
    assert cache.load((0, b"u1"), bytes(raw)) is s  # equal bytes, another object
    assert (cache.hits, cache.misses) == (1, 0)


def test_bytes_written_by_someone_else_are_decoded_afresh() -> None:
    cache = StateCache(10)
    s = state("u1", email="a@example.com")
    cache.written((0, b"u1"), s.encode(), s)
    other = state("u1", email="b@example.com")  # e.g. a timer wrote the record since
    got = cache.load((0, b"u1"), other.encode())
    assert got is not s
    assert got.traits == {"email": "b@example.com"}
    assert (cache.hits, cache.misses) == (0, 1)


def test_a_state_handed_out_is_not_kept_unless_written_again() -> None:
    cache = StateCache(10)
    s = state("u1")
    raw = s.encode()
    cache.written((0, b"u1"), raw, s)
    loaded = cache.load((0, b"u1"), raw)
    loaded.traits["email"] = "changed-but-not-written@example.com"
    assert len(cache) == 0
    again = cache.load((0, b"u1"), raw)
    assert again is not loaded
    assert again.traits == {}


def test_the_least_recently_written_states_go_beyond_the_capacity() -> None:
    cache = StateCache(2)
    states = {u: state(u) for u in ("a", "b", "c")}
    for u in ("a", "b"):
        cache.written((0, u.encode()), states[u].encode(), states[u])
    # "a" written again: now "b" is the oldest
    cache.written((0, b"a"), states["a"].encode(), states["a"])
    cache.written((0, b"c"), states["c"].encode(), states["c"])
    assert len(cache) == 2
    assert cache.load((0, b"a"), states["a"].encode()) is states["a"]
    assert cache.load((0, b"b"), states["b"].encode()) is not states["b"]


def test_the_same_key_in_another_partition_is_another_slot() -> None:
    cache = StateCache(10)
    s = state("u1")
    cache.written((0, b"u1"), s.encode(), s)
    assert cache.load((1, b"u1"), s.encode()) is not s


def test_capacity_zero_keeps_nothing() -> None:
    cache = StateCache(0)
    s = state("u1")
    cache.written((0, b"u1"), s.encode(), s)
    assert len(cache) == 0
    assert cache.load((0, b"u1"), s.encode()) is not s
