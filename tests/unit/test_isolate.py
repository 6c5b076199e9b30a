"""isolate: a batch that fails is split until the inputs failing on their own are found;
every other input is applied once, in order; errors of the surroundings are raised."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, RequestTimedOutError
from faust.exceptions import ProducerSendError

from mailstream.core.isolate import Unsettled, describe, isolate, transient
from mailstream.exceptions import Fenced
from mailstream.state.memory_store import MemoryStore
from mailstream.state.staged_flush import STATE, Outbox


class Poisoned(Exception):
    pass


class Runner:
    """An ``attempt`` that applies a batch all or nothing and fails on any poison in it."""

    def __init__(self, poison: set[int], error: Exception | None = None) -> None:
        self.poison = poison
        self.error = error
        self.applied: list[int] = []
        self.given_up: list[tuple[int, str]] = []
        self.attempts = 0

    async def attempt(self, batch: Sequence[int]) -> None:
        self.attempts += 1
        bad = [i for i in batch if i in self.poison]
        if bad:
            raise self.error or Poisoned(f"item {bad[0]} is poison")
        self.applied.extend(batch)

    async def give_up(self, item: int, exc: Exception) -> None:
        self.given_up.append((item, describe(exc)))


@pytest.mark.parametrize(
    ("size", "poison"),
    [
        (1, set()),
        (1, {0}),
        (10, set()),
        (10, {0}),
        (10, {9}),
        (10, {4, 5}),
        (1000, {1}),
        (1000, {0, 499, 500, 999}),
        (7, {0, 1, 2, 3, 4, 5, 6}),
    ],
)
async def test_each_input_ends_applied_or_given_up_exactly_once_in_order(
    size: int, poison: set[int]
) -> None:
    runner = Runner(poison)
    items = list(range(size))

    failed = await isolate(items, runner.attempt, runner.give_up)

    assert runner.applied == [i for i in items if i not in poison]
    assert [i for i, _ in runner.given_up] == sorted(poison)
    assert failed == len(poison)
    # the reason is the exception, type and message, on one line
    assert all(reason.startswith("Poisoned: item ") for _, reason in runner.given_up)


async def test_one_poison_in_a_thousand_costs_a_few_dozen_attempts() -> None:
    runner = Runner({617})

    await isolate(list(range(1000)), runner.attempt, runner.give_up)

    assert runner.attempts <= 2 * 10 + 1
    assert runner.given_up == [(617, "Poisoned: item 617 is poison")]


async def test_a_clean_batch_is_attempted_once() -> None:
    runner = Runner(set())

    assert await isolate(list(range(50)), runner.attempt, runner.give_up) == 0

    assert runner.attempts == 1


async def test_an_empty_batch_attempts_nothing() -> None:
    runner = Runner(set())

    assert await isolate([], runner.attempt, runner.give_up) == 0
    assert runner.attempts == 0


@pytest.mark.parametrize(
    "error",
    [
        KafkaConnectionError("broker gone"),
        RequestTimedOutError(),
        TimeoutError(),
        OSError(5),
        Fenced("partition 3 is not this worker's to write now"),
    ],
)
async def test_an_error_of_the_surroundings_is_raised_not_blamed_on_an_input(
    error: Exception,
) -> None:
    runner = Runner({3}, error)

    with pytest.raises(type(error)):
        await isolate(list(range(10)), runner.attempt, runner.give_up)

    assert runner.attempts == 1
    assert runner.given_up == []


def test_which_errors_are_transient() -> None:
    assert transient(KafkaConnectionError())
    assert transient(RequestTimedOutError())
    assert not transient(MessageSizeTooLargeError())
    assert not transient(TypeError("Recursion limit reached"))
    assert not transient(ValueError("a record of 5000000 bytes does not fit a batch"))


def wrapped(cause: Exception) -> Exception:
    """An error as Faust's producer raises it: ProducerSendError from the client's."""
    try:
        try:
            raise cause
        except Exception as exc:
            raise ProducerSendError(f"Error while sending: {exc!r}") from exc
    except ProducerSendError as outer:
        return outer


def test_an_error_wrapped_by_faust_is_judged_by_its_cause() -> None:
    assert transient(wrapped(KafkaConnectionError("no broker")))
    assert not transient(wrapped(MessageSizeTooLargeError()))


def test_describe_is_one_short_line() -> None:
    text = describe(ValueError("line one\nline two " + "x" * 1000))

    assert text.startswith("ValueError: line one line two")
    assert "\n" not in text and len(text) == 500


def test_unsettled_writes_back_what_the_store_holds_for_every_key_a_failed_flush_touched() -> None:
    store = MemoryStore("users")
    store.write(0, {b"ada": b"ada as stored"}, 0)
    store.write(1, {b"progress": b"41"}, 0)
    failed = Outbox()
    failed.put(store, 0, b"ada", b"ada with the poison applied")
    failed.put(store, 0, b"bob", b"bob, new")
    failed.put(store, 1, b"progress", b"45 {}")
    unsettled = Unsettled()
    assert not unsettled

    unsettled.add(failed)
    restore = unsettled.as_stored()

    assert unsettled
    assert restore.writes[STATE] == {
        (store, 0): {b"ada": b"ada as stored", b"bob": None},
        (store, 1): {b"progress": b"41"},
    }
    assert restore.messages == []


async def test_a_failing_batch_is_logged_once_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = Runner({3, 700})

    with caplog.at_level("DEBUG", logger="mailstream.core.isolate"):
        await isolate(list(range(1000)), runner.attempt, runner.give_up)

    assert [r.getMessage() for r in caplog.records] == [
        "a batch of 1000 failed (Poisoned: item 3 is poison):"
        " trying it in parts to find the input at fault"
    ]
    assert caplog.records[0].exc_info is None
