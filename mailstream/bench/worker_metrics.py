"""A bench worker's Prometheus metrics, read over its web port: counters and histograms."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# each sample's name -> (its labels, its value) for every series of that name
Samples = dict[str, list[tuple[dict[str, str], float]]]


def read_samples(web_url: str, *names: str) -> Samples:
    """The worker's metrics (only ``names``, if given: the whole page costs the worker a
    few milliseconds of CPU each time, and the bench polls it while measuring)."""
    query = "?" + "&".join(f"name[]={n}" for n in names) if names else ""
    with urllib.request.urlopen(f"{web_url}/metrics{query}", timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the series of ``name`` that carry ``labels``."""
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def total_over(urls: list[str], name: str, **labels: str) -> float:
    """``total`` of ``name`` summed over the workers at ``urls`` (each asked for it alone)."""
    return sum(total(read_samples(url, name), name, **labels) for url in urls)


def quantile(samples: Samples, name: str, q: float, **labels: str) -> float:
    """Upper bound of the bucket holding quantile ``q`` of a Prometheus histogram (of the
    series with ``labels``)."""
    buckets = sorted(
        (float(lab["le"]), v)
        for lab, v in samples.get(f"{name}_bucket", [])
        if "le" in lab and all(lab.get(k) == x for k, x in labels.items())
    )
    count = buckets[-1][1] if buckets else 0.0
    for bound, cumulative in buckets:
        if count and cumulative >= q * count:
            return bound
    return float("nan")


def flush_share(workers: list[Samples]) -> float:
    """The share of the ingest batches' time spent in their flushes, over the workers'
    samples."""
    flushes = sum(total(s, "mailstream_ingest_flush_seconds_sum") for s in workers)
    batches = sum(total(s, "mailstream_ingest_batch_seconds_sum") for s in workers)
    return flushes / max(batches, 1e-9)
