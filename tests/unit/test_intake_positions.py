"""A consumer position stored by itself (past transaction markers, aborted transactions,
compacted records) moves the progress forward only, and keeps the record's note."""

from __future__ import annotations

import pytest

from mailstream.kafka.intake import Intake
from mailstream.state.memory_store import MemoryStore
from mailstream.state.store import PROGRESS_KEY


def written(intake: Intake, positions: dict[tuple[str, int], int]) -> dict[int, bytes | None]:
    outbox = intake.advanced(positions)
    return {
        partition: items.get(PROGRESS_KEY)
        for stage in outbox.writes.values()
        for (_, partition), items in stage.items()
    }


@pytest.mark.parametrize(
    ("stored", "position", "expected"),
    [
        pytest.param(None, 3, b"3", id="never-read-log-starts-later"),
        pytest.param(b"5 ledger", 6, b"6 ledger", id="past-a-commit-marker-note-kept"),
        pytest.param(b"5", 5, None, id="no-move"),
        pytest.param(b"9", 6, None, id="never-backwards"),
        pytest.param(None, 0, None, id="empty-partition"),
    ],
)
def test_a_stored_position_moves_forward_only_with_its_note(
    stored: bytes | None, position: int, expected: bytes | None
) -> None:
    store = MemoryStore("users", [0])
    if stored is not None:
        store.write(0, {PROGRESS_KEY: stored}, 1)
    intake = Intake(store, {"events": PROGRESS_KEY})
    assert written(intake, {("events", 0): position}).get(0) == expected


def test_positions_of_other_topics_are_not_this_intakes() -> None:
    intake = Intake(MemoryStore("users", [0]), {"events": PROGRESS_KEY})
    assert written(intake, {("feedback", 0): 7}) == {}
