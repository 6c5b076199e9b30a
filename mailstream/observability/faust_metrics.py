"""Faust's own sensors, served under names that follow Prometheus conventions.

Faust observes its latencies in milliseconds under names without a unit (or ending in
``_ms``); ``promtool check metrics`` rejects those, and Prometheus' base unit is the
second. Its metrics live in a registry of their own, and a collector serves them in
seconds, named so, on the way to /metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.registry import Collector


def in_seconds(name: str) -> str | None:
    """The conventional name of a Faust metric observed in milliseconds, else None."""
    if name.endswith("_ms"):
        return name.removesuffix("_ms") + "_seconds"
    if name.endswith("_latency"):
        return name + "_seconds"
    return None


def _le_in_seconds(le: str) -> str:
    return le if le == "+Inf" else repr(float(le) / 1000)


class Renamed(Collector):
    """Another registry's metrics under ``conventional`` names."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            name = in_seconds(family.name)
            if name is None:
                yield family
                continue
            doc = family.documentation.replace(" in ms", "") + " (seconds)"
            renamed = Metric(name, doc, family.type, family.unit)
            for s in family.samples:
                suffix = s.name[len(family.name) :]
                labels, value = dict(s.labels), s.value
                if suffix == "_bucket" and "le" in labels:
                    labels["le"] = _le_in_seconds(labels["le"])
                elif suffix == "_sum":
                    value /= 1000
                renamed.add_sample(name + suffix, labels, value, s.timestamp, s.exemplar)
            yield renamed


# What ``install`` served last: a process serves one app's sensors, the last built.
_served: list[Renamed] = []


def install(app: faust.App, prefix: str = "faust") -> None:
    """Faust's sensors on ``app``, served (renamed) with mailstream's own metrics, in
    place of those of an app built before in this process."""
    registry = CollectorRegistry()
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, prefix))
    while _served:
        REGISTRY.unregister(_served.pop())
    renamed = Renamed(registry)
    REGISTRY.register(renamed)
    _served.append(renamed)
