"""The dashboard's figures: accounting from the metrics, per-minute rates, workflow funnels.

Pure: the caller passes the metric samples, the snapshots and the enrollments in; the
figures of several workers add up with ``add_up``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

# The accounting the dashboard shows, each from one metric and its label filter.
FIGURES: dict[str, tuple[str, dict[str, str]]] = {
    "consumed": ("mailstream_events_consumed_total", {}),
    "processed": ("mailstream_events_total", {"outcome": "processed"}),
    "deduplicated": ("mailstream_events_total", {"outcome": "deduplicated"}),
    "sampled_out": ("mailstream_events_total", {"outcome": "sampled_out"}),
    "throttled": ("mailstream_events_total", {"outcome": "throttled"}),
    "dead_lettered": ("mailstream_dead_letters_total", {}),
    # copied to their user's partition; each copy is consumed and counted again there
    "rerouted": ("mailstream_events_total", {"outcome": "rerouted"}),
    "suppressed": ("mailstream_send_decisions_total", {"reason": "suppressed"}),
    "globally_suppressed": (
        "mailstream_send_decisions_total",
        {"reason": "globally_suppressed"},
    ),
    "no_consent": ("mailstream_send_decisions_total", {"reason": "no_consent"}),
    "capped": ("mailstream_send_decisions_total", {"decision": "drop", "reason": "capped"}),
    "deferred": ("mailstream_send_decisions_total", {"decision": "defer"}),
    "sent": ("mailstream_sends_total", {"result": "sent"}),
    "retried": ("mailstream_sends_total", {"result": "retry"}),
    "failed": ("mailstream_sends_total", {"result": "permanent"}),
    "gave_up": ("mailstream_sends_total", {"result": "exhausted"}),
}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def collect(registry: CollectorRegistry = REGISTRY) -> Samples:
    """This process's metric samples, by sample name."""
    out: Samples = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def figures(samples: Samples) -> dict[str, float]:
    """The accounting figures from metric samples."""
    result = {}
    for figure, (name, labels) in FIGURES.items():
        result[figure] = sum(
            value
            for found, value in samples.get(name, ())
            if all(found.get(k) == v for k, v in labels.items())
        )
    return result


# The per-tenant figures: from the counters that carry a tenant label.
TENANT_FIGURES: dict[str, tuple[str, dict[str, str]]] = {
    "processed": ("mailstream_events_total", {"outcome": "processed"}),
    "deduplicated": ("mailstream_events_total", {"outcome": "deduplicated"}),
    "throttled": ("mailstream_events_total", {"outcome": "throttled"}),
    "dead_lettered": ("mailstream_events_total", {"outcome": "dead_lettered"}),
    "send_decisions": ("mailstream_send_decisions_total", {"decision": "send"}),
    "dropped": ("mailstream_send_decisions_total", {"decision": "drop"}),
    "deferred": ("mailstream_send_decisions_total", {"decision": "defer"}),
    "queued": ("mailstream_deliveries_total", {"result": "queued"}),
    "quota_held": ("mailstream_tenant_quota_total", {"quota": "sends_per_day"}),
    "sent": ("mailstream_sends_total", {"result": "sent"}),
    "failed": ("mailstream_sends_total", {"result": "permanent"}),
}


def tenant_figures(samples: Samples) -> dict[str, dict[str, float]]:
    """Per tenant label (bounded by the config), the TENANT_FIGURES; a tenant with no
    figure yet is absent."""
    out: dict[str, dict[str, float]] = {}
    for figure, (name, labels) in TENANT_FIGURES.items():
        for found, value in samples.get(name, ()):
            tenant = found.get("tenant")
            if tenant is None or not all(found.get(k) == v for k, v in labels.items()):
                continue
            row = out.setdefault(tenant, dict.fromkeys(TENANT_FIGURES, 0.0))
            row[figure] += value
    return out


class Minutes:
    """Snapshots of the figures, to tell how much each grew over the last minute."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._snapshots: deque[tuple[float, dict[str, float]]] = deque()

    def add(self, now: float, current: dict[str, float]) -> None:
        self._snapshots.append((now, current))
        while len(self._snapshots) > 2 and self._snapshots[1][0] <= now - self.window_s:
            self._snapshots.popleft()

    def last_minute(self, now: float, current: dict[str, float]) -> dict[str, float]:
        """Growth since the oldest snapshot no older than the window (or since start)."""
        base: dict[str, float] = {}
        for at, snapshot in self._snapshots:
            if at >= now - self.window_s:
                base = snapshot
                break
        return {k: v - base.get(k, 0.0) for k, v in current.items()}


def funnel(
    waiting: Mapping[tuple[str, int], int], transitions: Samples
) -> dict[str, dict[str, Any]]:
    """Per workflow: enrolled, completed and exited by goal (since start, from the
    transition counters) and how many are waiting at each step now (counted in the
    users this worker owns: (workflow, step index) -> enrollments)."""
    out: dict[str, dict[str, Any]] = {}

    def entry(workflow: str) -> dict[str, Any]:
        return out.setdefault(
            workflow, {"enrolled": 0.0, "completed": 0.0, "exited_goal": 0.0, "waiting": {}}
        )

    for labels, value in transitions.get("mailstream_workflow_transitions_total", ()):
        what = labels.get("transition")
        if what in ("enrolled", "completed", "exited_goal"):
            entry(labels["workflow"])[what] += value
    for (workflow, step), count in sorted(waiting.items()):
        steps = entry(workflow)["waiting"]
        steps[str(step)] = steps.get(str(step), 0) + count
    return out


def add_up(parts: Iterable[Any]) -> Any:
    """Numbers add; mappings add key by key; anything else keeps the first value."""
    total: Any = None
    for part in parts:
        if total is None:
            total = _copy(part)
        else:
            total = _add(total, part)
    return total


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _add(left: Any, right: Any) -> Any:
    if isinstance(left, bool) or isinstance(right, bool):
        return left
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left + right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        merged = dict(left)
        for key, value in right.items():
            merged[key] = _add(merged[key], value) if key in merged else _copy(value)
        return merged
    return left
