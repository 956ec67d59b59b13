"""Reading the services' metrics endpoints: one scrape as samples, and what two scrapes say
about the time between them (rates, and quantiles of the histogram observations made in it).

``auditmesh top``, the performance monitor and the tests read the mesh through this, exactly as
Prometheus would, so they see what an operator's dashboards see.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape", "fetch", "parse", "quantile", "rate", "window"]

Labels = dict[str, str]


@dataclass
class Scrape:
    """The samples of one scrape by sample name (``x_total``, ``x_bucket``, ``x_sum``, ...)."""

    target: str
    at: float
    """``time.monotonic()`` when it was taken."""
    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.samples)

    def series(self, name: str, **labels: str) -> list[tuple[Labels, float]]:
        """Samples of ``name`` whose labels include ``labels``."""
        return [(ls, v) for ls, v in self.samples.get(name, []) if all(ls.get(k) == want for k, want in labels.items())]

    def total(self, name: str, **labels: str) -> float | None:
        """The sum of the matching samples, or None when there is none."""
        found = self.series(name, **labels)
        return sum(v for _, v in found) if found else None

    def maximum(self, name: str, **labels: str) -> float | None:
        found = self.series(name, **labels)
        return max(v for _, v in found) if found else None

    def buckets(self, name: str, **labels: str) -> dict[float, float]:
        """Cumulative bucket counts of histogram ``name`` (``le`` -> count), summed over the
        matching series."""
        out: dict[float, float] = defaultdict(float)
        for ls, v in self.series(f"{name}_bucket", **labels):
            out[float(ls["le"])] += v
        return dict(out)


def parse(target: str, text: str, at: float | None = None) -> Scrape:
    scrape = Scrape(target, time.monotonic() if at is None else at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scrape.samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return scrape


def fetch(target: str, timeout: float = 1.0) -> Scrape:
    """GET ``http://target/metrics``; raises OSError (URLError, timeouts) when it does not answer."""
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=timeout) as resp:  # noqa: S310 - http only
        text = resp.read().decode()
    return parse(target, text)


def window(prev: Scrape | None, cur: Scrape, name: str, **labels: str) -> dict[float, float]:
    """Bucket counts of the observations made between two scrapes (all of ``cur``'s when there
    is no earlier one, or when the process restarted in between)."""
    now = cur.buckets(name, **labels)
    if prev is None:
        return now
    before = prev.buckets(name, **labels)
    diff = {le: n - before.get(le, 0.0) for le, n in now.items()}
    if any(n < 0 for n in diff.values()):
        return now
    return diff


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile (0..1) of cumulative buckets, interpolated within its bucket as
    Prometheus's ``histogram_quantile`` does; None when the buckets hold no observation. A
    quantile in the +Inf bucket is the largest finite bound."""
    if not buckets:
        return None
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def rate(prev: Scrape | None, cur: Scrape, name: str, **labels: str) -> float | None:
    """Per-second increase of a counter between two scrapes; None without an earlier scrape or
    a sample. A counter that went down (the process restarted) counts from zero."""
    if prev is None:
        return None
    now, before = cur.total(name, **labels), prev.total(name, **labels)
    elapsed = cur.at - prev.at
    if now is None or elapsed <= 0:
        return None
    increase = now - (before or 0.0)
    if increase < 0:
        increase = now
    return increase / elapsed
