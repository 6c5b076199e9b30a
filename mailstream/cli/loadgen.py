"""Synthetic traffic: a realistic mix of identifies, page views, carts, orders and signups."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from mailstream.producer import EventProducer

# (event_type, weight): mostly page views, as in real product traffic.
MIX: tuple[tuple[str, int], ...] = (
    ("page_viewed", 60),
    ("product_viewed", 15),
    ("cart_updated", 8),
    ("identify", 7),
    ("order_completed", 4),
    ("signup", 3),
    ("activated", 3),
)
TIMEZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", "America/Los_Angeles")
PRODUCTS = ("mug", "t-shirt", "sticker pack", "notebook", "hoodie", "poster")
MALFORMED: tuple[bytes, ...] = (
    b"{not json",
    b"[1, 2, 3]",
    b'{"event_type": "page_viewed", "user_id": "u", "timestamp": 1700000000000}',
    b'{"event_id": "x", "event_type": "page_viewed", "user_id": "u", "timestamp": "yesterday"}',
    b'{"event_id": "x", "event_type": "identify", "user_id": "u", "timestamp": 1700000000000,'
    b' "payload": {"timezone": "Mars/Olympus"}}',
)


def _payload(rng: random.Random, event_type: str, user: str) -> dict[str, Any]:
    if event_type == "identify":
        n = user.removeprefix("user-")
        return {
            "email": f"{user}@example.com",
            "first_name": f"User{n}",
            "timezone": rng.choice(TIMEZONES),
            "locale": rng.choice(("en", "fr", "de")),
            "consent": {"marketing": rng.random() < 0.7, "transactional": True},
        }
    if event_type == "page_viewed":
        return {"path": rng.choice(("/", "/pricing", "/docs", "/blog", "/shop"))}
    if event_type == "product_viewed":
        return {"product": rng.choice(PRODUCTS)}
    if event_type == "cart_updated":
        items = rng.sample(PRODUCTS, rng.randint(1, 3))
        return {"items": [{"name": i, "qty": rng.randint(1, 3)} for i in items]}
    if event_type == "order_completed":
        return {
            "order_id": uuid.UUID(int=rng.getrandbits(128)).hex[:12],
            "total": rng.randint(5, 300),
        }
    return {}


def synthetic_events(
    rng: random.Random,
    users: int,
    *,
    duplicates: float = 0.0,
    malformed: float = 0.0,
    start_ms: int | None = None,
    clock: Callable[[], int] | None = None,
) -> Iterator[tuple[bytes | None, bytes]]:
    """Endless (key, value) pairs; each user's first event is an identify.

    Each event's timestamp is ``clock()`` (epoch ms) when the pair is taken, the time it
    is sent for a paced run; without a clock, timestamps start at ``start_ms`` (default:
    now) and advance 1 ms per event, for streams produced ahead of time."""
    types = [t for t, _ in MIX]
    weights = [w for _, w in MIX]
    identified: set[int] = set()
    recent: list[tuple[bytes, bytes]] = []
    ts = start_ms if start_ms is not None else int(time.time() * 1000)
    while True:
        ts = clock() if clock is not None else ts + 1
        roll = rng.random()
        if roll < malformed:
            yield b"user-malformed", rng.choice(MALFORMED)
            continue
        if recent and roll < malformed + duplicates:
            yield rng.choice(recent)
            continue
        n = rng.randrange(users)
        user = f"user-{n}"
        event_type = "identify" if n not in identified else rng.choices(types, weights)[0]
        identified.add(n)
        event = {
            "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "event_type": event_type,
            "user_id": user,
            "timestamp": ts,
            "payload": _payload(rng, event_type, user),
            "metadata": {"source": "loadgen"},
        }
        pair = (user.encode(), orjson.dumps(event))
        if len(recent) < 1000:
            recent.append(pair)
        else:
            recent[rng.randrange(1000)] = pair
        yield pair


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


async def run_loadgen(
    producer: EventProducer,
    *,
    rate: float,
    users: int,
    count: int | None = None,
    duration: float | None = None,
    duplicates: float = 0.0,
    malformed: float = 0.0,
    seed: int | None = None,
) -> int:
    """Emit about ``rate`` events a second until ``count`` or ``duration``; return how many."""
    rng = random.Random(seed)  # noqa: S311 - synthetic traffic, reproducible from its seed
    # Stamped when sent: the dashboard's "event to send" then measures the pipeline, not
    # how far a 1 ms-per-event clock falls behind at 100 events a second.
    source = synthetic_events(
        rng, users, duplicates=duplicates, malformed=malformed, clock=wall_clock_ms
    )
    started = time.monotonic()
    sent = 0
    tick = 0.05
    while (count is None or sent < count) and (
        duration is None or time.monotonic() - started < duration
    ):
        due = int((time.monotonic() - started) * rate) + 1 - sent
        if count is not None:
            due = min(due, count - sent)
        for _ in range(max(due, 0)):
            key, value = next(source)
            await producer.send_raw(key, value)
            sent += 1
        await asyncio.sleep(tick)
    await producer.flush()
    return sent
