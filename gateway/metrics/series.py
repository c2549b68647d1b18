"""Per-series buffers: what requests added since the last flush, as plain numbers.

``observe`` only adds to these (attribute additions and one ``bisect`` per histogram), which is
several times cheaper than prometheus_client's per-call locking, and far cheaper than its
memory-mapped values with several workers. :meth:`flush` moves the pending amounts into the
prometheus_client children (created then, on first use): before every scrape, and every second
in each worker with several workers.

Histogram buffers add their bucket counts to the child's ``_buckets`` / ``_sum`` values directly:
prometheus_client has no public call to add a count to a bucket, and replaying observations one
by one would mean keeping them. ``test_metrics.py`` checks the result against a histogram fed
through the public ``observe``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Histogram

from gateway.metrics.instruments import Instruments

KINDS = ("prompt", "completion", "cached")


class HistogramBuffer:
    """Bucket counts and the sum of values not yet in ``child``."""

    __slots__ = ("_bounds", "_child", "_make", "counts", "total")

    def __init__(self, buckets: Sequence[float], make: Callable[[], Histogram]) -> None:
        self._bounds = (*buckets, float("inf"))
        self._make = make
        self._child: Histogram | None = None
        self.counts = [0] * len(self._bounds)
        self.total = 0.0

    def add(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        if self._child is None:
            self._child = self._make()
        buckets = self._child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        self._child._sum.inc(self.total)
        self.total = 0.0


class Latency:
    """The four histograms of one (route, deployment)."""

    __slots__ = ("duration", "overhead", "tpot", "ttft")

    def __init__(self, i: Instruments, route: str, deployment: str) -> None:
        def buffer(metric: Histogram) -> HistogramBuffer:
            return HistogramBuffer(
                metric._upper_bounds[:-1], lambda: metric.labels(route, deployment)
            )

        self.ttft = buffer(i.ttft)
        self.tpot = buffer(i.time_per_output_token)
        self.duration = buffer(i.request_duration)
        self.overhead = buffer(i.gateway_overhead)

    def flush(self) -> None:
        self.ttft.flush()
        self.tpot.flush()
        self.duration.flush()
        self.overhead.flush()


class RouteCounts:
    """SLO and cache outcomes of one route."""

    __slots__ = ("_children", "_i", "cache", "met", "missed", "name")

    def __init__(self, i: Instruments, name: str) -> None:
        self._i = i
        self.name = name
        self.met = 0
        self.missed = 0
        self.cache: dict[str, int] = {}  # normalized result -> pending count
        self._children: dict[tuple[str, str], Counter] = {}

    def flush(self) -> None:
        if self.met:
            self._child("slo", "true").inc(self.met)
            self.met = 0
        if self.missed:
            self._child("slo", "false").inc(self.missed)
            self.missed = 0
        for result, count in self.cache.items():
            if count:
                self._child("cache", result).inc(count)
                self.cache[result] = 0

    def _child(self, kind: str, value: str) -> Counter:
        child = self._children.get((kind, value))
        if child is None:
            metric = self._i.slo_requests if kind == "slo" else self._i.cache_requests
            child = self._children[kind, value] = metric.labels(self.name, value)
        return child


class Series:
    """What requests with one (route, deployment, team, status) added, and where it goes."""

    __slots__ = (
        "_children",
        "_i",
        "_labels",
        "_rejection_kind",
        "cached",
        "completion",
        "cost",
        "latency",
        "prompt",
        "rejected",
        "rejections",
        "requests",
        "route",
        "saved",
    )

    def __init__(
        self,
        i: Instruments,
        labels: tuple[str, str, str, str],
        route: RouteCounts,
        latency: Latency | None,
        rejection_kind: str | None,
    ) -> None:
        self._i = i
        self._labels = labels
        self.route = route
        self.latency = latency
        self.rejected = rejection_kind is not None
        self._rejection_kind = rejection_kind or ""
        self.requests = self.rejections = 0
        self.prompt = self.completion = self.cached = 0
        self.cost = self.saved = 0.0
        self._children: dict[str, Counter] = {}

    def flush(self) -> None:
        route, deployment, team, _ = self._labels
        i = self._i
        if self.requests:
            self._child("requests", i.requests, self._labels).inc(self.requests)
            self.requests = 0
        for kind, pending in zip(KINDS, (self.prompt, self.completion, self.cached), strict=True):
            if pending > 0:  # a negative count (a bug upstream) must not break a scrape
                self._child(kind, i.tokens, (route, deployment, team, kind)).inc(pending)
        self.prompt = self.completion = self.cached = 0
        if self.cost > 0:
            self._child("cost", i.cost, (route, deployment, team)).inc(self.cost)
        if self.saved > 0:
            self._child("saved", i.cost_saved, (route, team)).inc(self.saved)
        self.cost = self.saved = 0.0
        if self.rejections:
            labels = (team, self._rejection_kind)
            self._child("rejected", i.budget_rejections, labels).inc(self.rejections)
            self.rejections = 0

    def _child(self, name: str, metric: Counter, labels: tuple[str, ...]) -> Counter:
        child = self._children.get(name)
        if child is None:
            child = self._children[name] = metric.labels(*labels)
        return child
