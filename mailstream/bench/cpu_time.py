"""CPU time: what the bench's processes used over a phase, and what the host's
hypervisor gave to other machines meanwhile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuSpan:
    """CPU time used by some processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.seconds = 0.0

    def start(self) -> None:
        self.seconds = -_cpu_seconds(self.pids)

    def stop(self) -> None:
        self.seconds += _cpu_seconds(self.pids)


class StolenSpan:
    """The share of this machine's CPU time that its hypervisor gave to other machines
    (steal, from /proc/stat) between ``start()`` and ``stop()``: on a shared host the
    phases of one run can get very different machines."""

    def __init__(self) -> None:
        self.share = 0.0
        self._at = (0, 0)

    def start(self) -> None:
        self._at = _host_ticks()

    def stop(self) -> None:
        (stolen, total), (stolen_before, total_before) = _host_ticks(), self._at
        self.share = (stolen - stolen_before) / max(total - total_before, 1)


def _host_ticks() -> tuple[int, int]:
    """(stolen, all) CPU ticks of this machine so far; (0, 0) where /proc/stat is not."""
    try:
        return cpu_ticks(Path("/proc/stat").read_text())
    except OSError:
        return 0, 0


def cpu_ticks(stat: str) -> tuple[int, int]:
    """(stolen, all) ticks from the first line of /proc/stat: user, nice, system, idle,
    iowait, irq, softirq, steal (guest time is counted in user already). Kernels
    before 2.6.11 have no steal field."""
    fields = stat.splitlines()[0].split()
    if fields[:1] != ["cpu"]:
        raise ValueError(f"not a /proc/stat cpu line: {stat[:40]!r}")
    ticks = [int(f) for f in fields[1:9]]
    ticks += [0] * (8 - len(ticks))
    return ticks[7], sum(ticks)


class Span(Protocol):
    """Something measured between ``start()`` and ``stop()``."""

    def start(self) -> None: ...

    def stop(self) -> None: ...
