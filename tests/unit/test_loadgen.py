"""Synthetic traffic: stamped with the time it is sent when paced, repeatable otherwise."""

from __future__ import annotations

import itertools
import random

import orjson

from mailstream.cli.loadgen import synthetic_events


def timestamps(pairs: list[tuple[bytes | None, bytes]]) -> list[int]:
    found = []
    for _, value in pairs:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("timestamp"), int):
            found.append(event["timestamp"])
    return found


def test_a_paced_stream_takes_each_timestamp_from_the_clock_when_taken() -> None:
    now = [1_700_000_000_000]

    def clock() -> int:
        return now[0]

    source = synthetic_events(random.Random(3), 50, clock=clock)
    taken = []
    for _ in range(300):  # 100 events a second for 3 s
        taken.append(next(source))
        now[0] += 10
    stamps = timestamps(taken)
    assert stamps == [1_700_000_000_000 + 10 * i for i in range(300)]


def test_without_a_clock_the_stream_is_repeatable_for_the_bench() -> None:
    def stream() -> list[tuple[bytes | None, bytes]]:
        source = synthetic_events(
            random.Random(1), 200, duplicates=0.02, malformed=0.005, start_ms=1_000
        )
        return list(itertools.islice(source, 2000))

    first = stream()
    assert first == stream()
    stamps = timestamps(first)
    assert stamps[:3] == [1_001, 1_002, 1_003]
