"""The worker side of workflow health: snapshots of this worker's counters for the
recent window, and its per-workflow figures for the dashboard to add up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mailstream.web.figures import collect
from mailstream.workflows import health, health_window


class HealthSnapshots:
    """This worker's counters over the recent window, by workflow."""

    def __init__(self, workflow_names: Callable[[], set[str]]) -> None:
        self.workflow_names = workflow_names
        self.window = health_window.Window(time.monotonic())

    async def snapshot(self) -> None:
        self.window.add(time.monotonic(), health_window.flat(collect()))

    def local_figures(self) -> dict[str, dict[str, Any]]:
        """This worker's per-workflow figures over the window
        (see mailstream.workflows.health_window)."""
        growth, span_s = self.window.growth(time.monotonic(), health_window.flat(collect()))
        return health_window.local_figures(growth, span_s)

    def workflow_health(self, figures: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
        """Every configured workflow's health from the figures of all workers, added up."""
        return {
            "window_s": health_window.WINDOW_S,
            "workflows": health.report(figures or {}, self.workflow_names()),
        }


def register(app: Any, workflow_names: Callable[[], set[str]]) -> HealthSnapshots:
    snapshots = HealthSnapshots(workflow_names)
    app.timer(interval=health_window.SNAPSHOT_S)(snapshots.snapshot)
    return snapshots
