"""The recent window of workflow health: how much each counter grew over the last minutes
on one worker, turned into per-workflow figures that add up over workers.

Pure: the caller passes metric samples and ``now`` in."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

WINDOW_S = 900.0  # health looks at the last 15 minutes (or since the worker started)
SNAPSHOT_S = 30.0  # how often a worker snapshots its counters for that window

TRANSITIONS = "mailstream_workflow_transitions_total"
RENDERS = "mailstream_template_renders_total"
SENDS = "mailstream_workflow_sends_total"
EVENT_TO_SEND = "mailstream_workflow_event_to_send_seconds_bucket"
TIMER_LAG = "mailstream_workflow_timer_lag_seconds_bucket"
_WATCHED = (TRANSITIONS, RENDERS, SENDS, EVENT_TO_SEND, TIMER_LAG)
FLOWS = ("enrolled", "completed", "exited_goal", "exited")
SEND_RESULTS = ("sent", "retry", "permanent", "exhausted", "unknown")

Samples = Mapping[str, Iterable[tuple[Mapping[str, str], float]]]
Flat = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def flat(samples: Samples) -> Flat:
    """The samples health reads, keyed by name and labels, so two readings subtract."""
    out: Flat = {}
    for name in _WATCHED:
        for labels, value in samples.get(name, ()):
            out[(name, tuple(sorted(labels.items())))] = value
    return out


class Window:
    """Snapshots of the counters, to tell how much each grew over the last ``window_s``.

    Seeded with zeros at ``start`` (counters are zero when the process starts), so a
    worker younger than the window reports everything since it started.
    """

    def __init__(self, start: float, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._snapshots: deque[tuple[float, Flat]] = deque([(start, {})])

    def add(self, now: float, current: Flat) -> None:
        self._snapshots.append((now, current))
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= now - self.window_s:
            self._snapshots.popleft()

    def growth(self, now: float, current: Flat) -> tuple[Flat, float]:
        """Growth of each counter since the newest snapshot at least a window old (or the
        oldest one), and how many seconds that covers."""
        at, base = self._snapshots[0]
        for when, snapshot in self._snapshots:
            if when > now - self.window_s:
                break
            at, base = when, snapshot
        return {k: v - base.get(k, 0.0) for k, v in current.items()}, max(now - at, 0.0)


def local_figures(growth: Flat, span_s: float) -> dict[str, dict[str, Any]]:
    """One worker's per-workflow figures over its window. Every number is a count or a
    rate, so the figures of several workers add up key by key."""
    out: dict[str, dict[str, Any]] = {}

    def entry(workflow: str) -> dict[str, Any]:
        return out.setdefault(
            workflow,
            {
                **{k: 0.0 for k in FLOWS},
                "enrollments_per_min": 0.0,
                "templates": {},
                "sends": {k: 0.0 for k in SEND_RESULTS},
                "event_to_send": {},
                "timer_lag": {},
            },
        )

    for (name, pairs), value in sorted(growth.items()):
        labels = dict(pairs)
        workflow = labels.get("workflow")
        if not workflow:
            continue
        if name == TRANSITIONS:
            if labels.get("transition") in FLOWS:
                entry(workflow)[labels["transition"]] += value
        elif name == RENDERS:
            t = entry(workflow)["templates"].setdefault(labels.get("template", "?"), {})
            result = labels.get("result", "?")
            if result == "ok":
                t["ok"] = t.get("ok", 0.0) + value
            else:
                reasons = t.setdefault("failed", {}).setdefault(result, {})
                variable = labels.get("variable", "")
                reasons[variable] = reasons.get(variable, 0.0) + value
        elif name == SENDS:
            sends = entry(workflow)["sends"]
            result = labels.get("result", "?")
            sends[result] = sends.get(result, 0.0) + value
        elif name in (EVENT_TO_SEND, TIMER_LAG):
            key = "event_to_send" if name == EVENT_TO_SEND else "timer_lag"
            entry(workflow)[key][labels.get("le", "+Inf")] = value
    minutes = max(span_s, 1.0) / 60.0
    for doc in out.values():
        doc["enrollments_per_min"] = doc["enrolled"] / minutes
    return out


def quantile(buckets: Mapping[str, float], q: float) -> float | None:
    """Quantile ``q`` of a histogram from its cumulative bucket counts (``le`` -> count),
    interpolated within the bucket as Prometheus's histogram_quantile does; None if empty.
    A quantile past the last finite bound is that bound."""
    pairs = sorted((float(le), count) for le, count in buckets.items())
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in pairs:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower
