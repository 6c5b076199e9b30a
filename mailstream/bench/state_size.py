"""The pipeline's state phase: a worker's memory and data directory once many users are
known, and the measures of both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from mailstream.bench.consume_rates import consume_rate
from mailstream.bench.pipeline_site import Bench


async def measure_state(bench: Bench, topics: dict[str, str], users: int) -> dict[str, Any]:
    """Identify ``users`` users to a new worker with ``topics``; its RSS and the size of
    its data directory once it has consumed them all."""
    print(f"state: identifying {users:,} users ...", flush=True)
    await bench.produce(topics["events"], identifies(users), users)
    url = bench.start_worker("bench-state", topics)
    await consume_rate([url], users, "the state worker")
    return {
        "state_users": users,
        "state_worker_rss_mb": round(rss_mb(bench.procs[-1].pid)),
        "state_disk_mb": round(disk_mb(bench.root / "bench-state-0")),
    }


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    """The size of the files under ``path``, in MB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def identifies(users: int) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) of an ``identify`` event for each of ``users`` users."""
    now = int(time.time() * 1000)
    for n in range(users):
        user = f"user-{n}"
        event = {
            "event_id": f"state-{n}",
            "event_type": "identify",
            "user_id": user,
            "timestamp": now,
            "payload": {"email": f"{user}@example.com", "first_name": f"User{n}"},
        }
        yield user.encode(), orjson.dumps(event)
