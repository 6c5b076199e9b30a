"""The worker side of workflow health: snapshots of this worker's counters for the
recent window, and its per-workflow figures for the dashboard to add up."""

from __future__ import annotations

import time
from typing import Any

from mailstream.app import app
from mailstream.runtime.components import workflow_names
from mailstream.web.figures import collect
from mailstream.workflows import health, health_window

window = health_window.Window(time.monotonic())


@app.timer(interval=health_window.SNAPSHOT_S)
async def snapshot_counters() -> None:
    window.add(time.monotonic(), health_window.flat(collect()))


def local_figures() -> dict[str, dict[str, Any]]:
    """This worker's per-workflow figures over the window
    (mailstream.workflows.health_window)."""
    growth, span_s = window.growth(time.monotonic(), health_window.flat(collect()))
    return health_window.local_figures(growth, span_s)


def workflow_health(figures: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Every configured workflow's health from the figures of all workers, added up."""
    return {
        "window_s": health_window.WINDOW_S,
        "workflows": health.report(figures or {}, workflow_names()),
    }
