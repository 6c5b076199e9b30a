"""Digest steps on a fake clock: the window, the count limit, the next digest, never empty,
replays, and what the template sees."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mailstream.core.events import Event
from mailstream.core.user_state import UserState, apply_event
from mailstream.workflows import digest
from mailstream.workflows.engine import WAIT_TIMER, Effects, Engine, TimerOp, send_id
from mailstream.workflows.spec import WorkflowSpec, compile_workflow
from mailstream.workflows.templates import DEFAULT_TEMPLATE_DIR, Templates

T0 = 1_700_000_000_000
MINUTE = 60_000
HOUR = 60 * MINUTE


def engine_of(**specs: dict[str, Any]) -> Engine:
    return Engine(
        [compile_workflow(name, WorkflowSpec.model_validate(s)) for name, s in specs.items()]
    )


def comments(
    window: str = "1h", max_items: int = 20, entry: str = "always", **extra: Any
) -> Engine:
    """The usual shape: every comment enrolls, the digest step collects until it sends."""
    return engine_of(
        comments={
            "trigger": {"event": "comment_added"},
            "entry": entry,
            "steps": [
                {
                    "digest": {
                        "event": "comment_added",
                        "window": window,
                        "max_items": max_items,
                        "template": "comments_digest",
                        **extra,
                    }
                }
            ],
        }
    )


def comment(at: int, n: int, event_id: str | None = None, **payload: Any) -> Event:
    return Event(
        event_id=event_id or f"c{n}",
        event_type="comment_added",
        user_id="alice",
        timestamp=at,
        tenant_id="acme",
        payload={"n": n, **payload},
    )


class Clock:
    """Feeds events and due timers to the engine in time order, like the workers do."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.user = UserState("acme", "alice")
        self.timers: set[tuple[int, str, str]] = set()
        self.sends: list[Any] = []
        self.now = T0

    def _apply(self, fx: Effects) -> Effects:
        for op in fx.timers_del:
            self.timers.discard((op.due, op.kind, op.workflow))
        for op in fx.timers_add:
            self.timers.add((op.due, op.kind, op.workflow))
        self.sends.extend(fx.sends)
        return fx

    def advance(self, to: int) -> None:
        """Move the clock to ``to``, firing every timer due on the way."""
        while True:
            due = sorted(t for t in self.timers if t[0] <= to)
            if not due:
                break
            self.timers.discard(due[0])
            self.now = due[0][0]
            self._apply(self.engine.on_timer(self.user, due[0][1], due[0][2], due[0][0], self.now))
        self.now = to

    def event(self, ev: Event) -> Effects:
        self.advance(ev.timestamp)
        if self.user.seen.check_and_add(ev.event_id, ev.timestamp // 1000):
            return Effects()  # the ingest's dedup, as the worker has it
        apply_event(self.user, ev)
        return self._apply(self.engine.on_event(self.user, ev, self.now))

    def digests(self) -> list[list[int]]:
        """The payload numbers each digest sent listed, in order."""
        return [[item["payload"]["n"] for item in s.event["items"]] for s in self.sends]


# ---- the window and the count limit, table-driven ------------------------------------------


@pytest.mark.parametrize(
    ("window", "max_items", "arrivals", "end", "want"),
    [
        pytest.param("1h", 20, [0, 10, 20], 2 * HOUR, [[1, 2, 3]], id="time-limit"),
        pytest.param("1h", 3, [0, 1, 2, 3, 4], 2 * HOUR, [[1, 2, 3], [4, 5]], id="count-limit"),
        pytest.param("1h", 20, [0, 30, 61, 70], 3 * HOUR, [[1, 2], [3, 4]], id="after-window"),
        pytest.param("1h", 1, [0, 1, 2], 2 * HOUR, [[1], [2], [3]], id="one-item-each"),
        pytest.param("1h", 20, [0, 59], 59 * MINUTE, [], id="window-still-open"),
        pytest.param("1h", 20, [], 10 * HOUR, [], id="nothing-collected-nothing-sent"),
        pytest.param("1h", 5, [0, 1, 2, 3, 4], 4 * MINUTE, [[1, 2, 3, 4, 5]], id="full-at-once"),
    ],
)
def test_a_digest_is_sent_when_its_window_ends_or_it_is_full(
    window: str, max_items: int, arrivals: list[int], end: int, want: list[list[int]]
) -> None:
    clock = Clock(comments(window, max_items))
    for n, minute in enumerate(arrivals, start=1):
        clock.event(comment(T0 + minute * MINUTE, n))
    clock.advance(T0 + end)

    assert clock.digests() == want
    assert all(s.template == "comments_digest" for s in clock.sends)


def test_the_window_opens_with_the_first_item_and_its_timer_is_durable_state() -> None:
    engine = comments("1h")
    user = UserState("acme", "alice")
    first = comment(T0, 1)
    apply_event(user, first)
    fx = engine.on_event(user, first, T0)

    assert fx.sends == []
    assert fx.timers_add == [TimerOp(T0 + HOUR, WAIT_TIMER, "comments")]
    assert user.enrollments["comments"]["due"] == T0 + HOUR
    assert user.enrollments["comments"][digest.ITEMS] == [["c1", "comment_added", T0, {"n": 1}]]
    # The items and the due time are in the user record, so a restart loses neither.
    again = UserState.decode(user.encode())
    later = engine.on_timer(again, WAIT_TIMER, "comments", T0 + HOUR, T0 + HOUR)
    assert [s.event["count"] for s in later.sends] == [1]


def test_a_full_digest_clears_its_timer_and_a_stale_fire_sends_nothing() -> None:
    clock = Clock(comments("1h", max_items=2))
    clock.event(comment(T0, 1))
    fx = clock.event(comment(T0 + MINUTE, 2))

    assert fx.timers_del == [TimerOp(T0 + HOUR, WAIT_TIMER, "comments")]
    assert clock.timers == set()
    stale = clock.engine.on_timer(clock.user, WAIT_TIMER, "comments", T0 + HOUR, T0 + HOUR)
    assert stale.sends == [] and clock.digests() == [[1, 2]]


@pytest.mark.parametrize(
    ("events", "want"),
    [
        pytest.param(["c1", "c2", "c1"], [[1, 2]], id="same-id-later"),
        pytest.param(["c1", "c1", "c1"], [[1]], id="same-id-thrice"),
    ],
)
def test_a_replayed_event_is_not_counted_twice(events: list[str], want: list[list[int]]) -> None:
    clock = Clock(comments("1h", max_items=3))
    numbers = {"c1": 1, "c2": 2}
    for minute, event_id in enumerate(events):
        clock.event(comment(T0 + minute * MINUTE, numbers[event_id], event_id))
    clock.advance(T0 + 2 * HOUR)

    assert clock.digests() == want


def test_the_digest_keeps_out_a_replay_even_past_the_ingest_dedup() -> None:
    # The dedup window is bounded (24 h, a number of ids); the digest checks its own items.
    engine = comments("1h")
    user = UserState("acme", "alice")
    for at in (T0, T0 + MINUTE):
        ev = comment(at, 1, "same")
        engine.on_event(user, ev, at)
    assert len(user.enrollments["comments"][digest.ITEMS]) == 1


def test_the_template_sees_every_item_oldest_first_with_type_time_and_payload() -> None:
    clock = Clock(comments("1h"))
    for n in (1, 2, 3):
        clock.event(comment(T0 + n * MINUTE, n, text=f"comment {n}"))
    clock.advance(T0 + 3 * HOUR)

    [sent] = clock.sends
    assert sent.event["count"] == 3
    assert sent.event["first_at"] == T0 + MINUTE and sent.event["last_at"] == T0 + 3 * MINUTE
    assert sent.event["items"][0] == {
        "event_id": "c1",
        "event_type": "comment_added",
        "timestamp": T0 + MINUTE,
        "time": "2023-11-14T22:14:20+00:00",
        "payload": {"n": 1, "text": "comment 1"},
    }
    assert sent.send_id == send_id(clock.user, "comments", "c1", 1)
    assert sent.context == {"n": 3, "text": "comment 3"}, "the trigger refreshed the context"


def test_fields_keeps_only_those_payload_keys() -> None:
    clock = Clock(comments("1h", fields=["n"]))
    clock.event(comment(T0, 1, text="long body", author="bob"))
    clock.advance(T0 + 2 * HOUR)

    assert clock.sends[0].event["items"][0]["payload"] == {"n": 1}


def test_where_and_several_event_types() -> None:
    engine = engine_of(
        activity={
            "trigger": {"event": "signup"},
            "steps": [
                {
                    "digest": {
                        "event": ["comment_added", "mention"],
                        "where": {"field": "event.spam", "op": "ne", "value": True},
                        "window": "1h",
                        "template": "activity",
                    }
                },
                {"send": "after_digest"},
            ],
        }
    )
    clock = Clock(engine)
    clock.event(Event("s", "signup", "alice", T0, "acme", {}))
    clock.event(comment(T0 + 1, 1))
    clock.event(comment(T0 + 2, 2, spam=True))
    clock.event(Event("m", "mention", "alice", T0 + 3, "acme", {"n": 3}))
    clock.event(Event("o", "other", "alice", T0 + 4, "acme", {"n": 4}))
    clock.advance(T0 + 2 * HOUR)

    assert [s.template for s in clock.sends] == ["activity", "after_digest"]
    assert [i["event_type"] for i in clock.sends[0].event["items"]] == ["comment_added", "mention"]
    assert "activity" not in clock.user.enrollments, "the workflow went on after the digest"


def test_a_digest_reached_after_a_wait_waits_for_its_first_item_without_a_timer() -> None:
    engine = engine_of(
        weekly={
            "trigger": {"event": "signup"},
            "steps": [
                {"wait": "1h"},
                {"digest": {"event": "comment_added", "window": "1h", "template": "d"}},
            ],
        }
    )
    clock = Clock(engine)
    clock.event(Event("s", "signup", "alice", T0, "acme", {}))
    clock.advance(T0 + 10 * HOUR)
    assert clock.sends == [] and clock.timers == set()
    assert clock.user.enrollments["weekly"]["step"] == 1

    clock.event(comment(T0 + 11 * HOUR, 1))
    clock.advance(T0 + 13 * HOUR)
    assert clock.digests() == [[1]]


def test_a_goal_ends_the_digest_without_sending_it() -> None:
    engine = engine_of(
        comments={
            "trigger": {"event": "comment_added"},
            "entry": "always",
            "goals": [{"event": "unsubscribed_from_comments"}],
            "steps": [{"digest": {"event": "comment_added", "window": "1h", "template": "d"}}],
        }
    )
    clock = Clock(engine)
    clock.event(comment(T0, 1))
    fx = clock.event(Event("g", "unsubscribed_from_comments", "alice", T0 + 1, "acme", {}))
    clock.advance(T0 + 2 * HOUR)

    assert fx.timers_del == [TimerOp(T0 + HOUR, WAIT_TIMER, "comments")]
    assert clock.sends == [] and clock.user.enrollments == {}


def test_entry_once_gives_one_digest_only() -> None:
    clock = Clock(comments("1h", entry="once"))
    for n, at in enumerate((0, 2 * HOUR, 3 * HOUR), start=1):
        clock.event(comment(T0 + at, n))
    clock.advance(T0 + 5 * HOUR)

    assert clock.digests() == [[1]]


def test_the_same_events_on_a_copy_give_the_same_digest_and_send_id() -> None:
    clock = Clock(comments("1h", max_items=2))
    clock.event(comment(T0, 1))
    copy_ = Clock(clock.engine)
    copy_.user = copy.deepcopy(clock.user)
    copy_.timers = set(clock.timers)
    for c in (clock, copy_):
        c.event(comment(T0 + 1, 2))
    assert [s.send_id for s in clock.sends] == [s.send_id for s in copy_.sends]
    assert len(clock.sends) == 1


@pytest.mark.parametrize(
    ("items", "event_id", "added"),
    [
        ([], "a", True),
        ([["a", "x", T0, {}]], "a", False),
        ([["a", "x", T0, {}], ["b", "x", T0, {}]], "c", False),  # full at max_items=2
    ],
)
def test_add(items: list[list[Any]], event_id: str, added: bool) -> None:
    rule = digest.DigestRule(frozenset({"x"}), HOUR, max_items=2)
    before = len(items)
    assert digest.add(rule, items, Event(event_id, "x", "u", T0, "t", {})) is added
    assert len(items) == before + added


def test_the_shipped_digest_template_lists_every_item() -> None:
    items = [
        [f"c{n}", "comment_added", T0 + n, {"author": f"a{n}", "text": f"<b>said {n}</b>"}]
        for n in range(7)
    ]
    rendered = Templates(DEFAULT_TEMPLATE_DIR).render(
        "comments_digest", user={"first_name": "Ada"}, event=digest.template_view(items)
    )
    assert rendered.subject == "7 new comments"
    for n in range(7):
        assert f"a{n}" in rendered.text and f"<b>said {n}</b>" in rendered.text
        assert f"&lt;b&gt;said {n}&lt;/b&gt;" in rendered.html
