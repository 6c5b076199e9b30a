"""Find the inputs of a batch that fail on their own, so the rest of the batch goes on.

A batch that raises while it is decided or made durable is split in halves, each tried
again, down to single inputs; one that still fails alone is handed to ``give_up`` (to be
dead-lettered) and the others proceed, in their order. One bad input then costs a few
retries, never a worker that fails on it at every restart.

Errors of the surroundings (the broker unreachable, a timeout, a partition that moved to
another worker under exactly_once) say nothing about the input: they are raised as they
are, for the caller's usual handling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from mailstream.exceptions import Fenced
from mailstream.state.staged_flush import Outbox
from mailstream.state.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The reason code of an input dead-lettered for the exception it raised.
ENGINE_ERROR = "engine_error"

Attempt = Callable[[Sequence[T]], Awaitable[None]]
GiveUp = Callable[[T, Exception], Awaitable[None]]


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the surroundings rather than from the input: trying
    the same input again later may well succeed. Faust wraps the producer's errors
    (ProducerSendError), so the errors it was raised from count too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Fenced):
            return True
        if isinstance(seen, KafkaError):
            if seen.retriable or isinstance(seen, KafkaConnectionError | KafkaTimeoutError):
                return True
        elif isinstance(seen, TimeoutError | ConnectionError | OSError | asyncio.CancelledError):
            return True
        seen = seen.__cause__
    return False


def describe(exc: BaseException, limit: int = 500) -> str:
    """An exception as one short line: its type and message, no traceback."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def isolate(
    items: Sequence[T],
    attempt: Attempt[T],
    give_up: GiveUp[T],
    is_transient: Callable[[BaseException], bool] = transient,
) -> int:
    """``attempt(items)``; if it raises, split and retry until each input that fails on
    its own is found and passed to ``give_up`` with its exception. Inputs go to
    ``attempt`` and ``give_up`` in their order, each exactly once to a call that
    returns. A transient error is raised at once. Returns how many were given up."""
    if not items:
        return 0
    try:
        await attempt(items)
        return 0
    except Exception as exc:
        if is_transient(exc):
            raise
        if len(items) == 1:
            await give_up(items[0], exc)
            return 1
        # One line for the batch; each input given up is for the caller to report.
        logger.warning(
            "a batch of %d failed (%s): trying it in parts to find the input at fault",
            len(items),
            describe(exc, 200),
        )
    return await _halves(items, attempt, give_up, is_transient)


async def _halves(
    items: Sequence[T],
    attempt: Attempt[T],
    give_up: GiveUp[T],
    is_transient: Callable[[BaseException], bool],
) -> int:
    """Each half of ``items`` tried on its own, and split again while it fails."""
    failed = 0
    for half in (items[: len(items) // 2], items[len(items) // 2 :]):
        try:
            await attempt(half)
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(half) == 1:
                await give_up(half[0], exc)
                failed += 1
            else:
                failed += await _halves(half, attempt, give_up, is_transient)
    return failed


class Unsettled:
    """What failed flushes were writing. A flush that fails half-way may have sent some
    of its changelog records without writing the local stores; writing each such key
    again as the local store holds it (``as_stored``) makes the changelog agree, so a
    later recovery restores what this worker had, not what it gave up."""

    def __init__(self) -> None:
        self._keys: dict[tuple[Store, int], set[bytes]] = {}

    def add(self, outbox: Outbox) -> None:
        for stage in outbox.writes.values():
            for slot, items in stage.items():
                self._keys.setdefault(slot, set()).update(items)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def as_stored(self) -> Outbox:
        """An outbox writing every key a failed flush touched with its stored value
        (a deletion where there is none)."""
        outbox = Outbox()
        for (store, partition), keys in self._keys.items():
            for key in sorted(keys):
                outbox.put(store, partition, key, store.get(partition, key))
        return outbox
