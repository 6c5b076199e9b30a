"""metrics.labelled: the cached labels() counts in the very series labels() names."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from mailstream.observability.metrics import labelled


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param(("welcome", "enrolled"), id="two-labels"),
        pytest.param(("welcome", ""), id="an-empty-value"),
        pytest.param(("ünï", "x y"), id="odd-values"),
    ],
)
def test_labelled_counts_in_the_series_labels_names(labels: tuple[str, str]) -> None:
    registry = CollectorRegistry()
    counter = Counter("transitions_total", "t", ["workflow", "what"], registry=registry)

    labelled(counter, *labels).inc()
    labelled(counter, *labels).inc(2)
    counter.labels(*labels).inc()

    assert labelled(counter, *labels) is counter.labels(*labels)
    sample = dict(zip(("workflow", "what"), labels, strict=True))
    assert registry.get_sample_value("transitions_total", sample) == 4


def test_labelled_keeps_metrics_and_label_sets_apart() -> None:
    registry = CollectorRegistry()
    one = Counter("one_total", "o", ["stage"], registry=registry)
    other = Histogram("other_seconds", "o", ["stage"], registry=registry)

    labelled(one, "written").inc()
    labelled(one, "taken").inc(3)
    labelled(other, "written").observe(0.5)

    assert registry.get_sample_value("one_total", {"stage": "written"}) == 1
    assert registry.get_sample_value("one_total", {"stage": "taken"}) == 3
    assert registry.get_sample_value("other_seconds_count", {"stage": "written"}) == 1
    assert registry.get_sample_value("other_seconds_count", {"stage": "taken"}) is None
