"""What GET /metrics serves: the instruments (from this process or every worker's files) plus
``tollgate_goodput_ratio``, rendered in the Prometheus text format 0.0.4.

Goodput over a recent window, computed cheaply: nothing happens per request beyond the
``tollgate_slo_requests_total`` counter. At each scrape :class:`GoodputWindow` remembers the
counter totals (at most one snapshot every ``window / 60``) and reports, per route,
``delta(met) / delta(all)`` against the newest snapshot at least ``window`` old. Until such a
snapshot exists (the first ``window`` after the first scrape) the ratio covers everything since
the start. Because it works on the aggregated counters, it is equally right with one process or
several workers (whichever worker answers the scrape).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SLO_FAMILY = "tollgate_slo_requests"
GOODPUT = "tollgate_goodput_ratio"

Totals = dict[str, tuple[float, float]]  # route -> (requests that met the SLO, all requests)


class GoodputWindow:
    """Goodput per route over the last ``window_s`` seconds, from cumulative counter snapshots."""

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s
        self._spacing_s = window_s / 60
        self._snapshots: deque[tuple[float, Totals]] = deque()

    def ratios(self, totals: Totals, now: float) -> dict[str, float]:
        """The share of SLO requests that met it, per route with requests in the window."""
        cutoff = now - self.window_s
        snapshots = self._snapshots
        # Keep one snapshot older than the window (the baseline) and the ones inside it.
        while len(snapshots) > 1 and snapshots[1][0] <= cutoff:
            snapshots.popleft()
        baseline: Totals = snapshots[0][1] if snapshots and snapshots[0][0] <= cutoff else {}
        result: dict[str, float] = {}
        for route, (met, total) in totals.items():
            met_before, total_before = baseline.get(route, (0.0, 0.0))
            if total < total_before or met < met_before:  # counters restarted: since the start
                met_before = total_before = 0.0
            requests = total - total_before
            if requests > 0:
                result[route] = (met - met_before) / requests
        if not snapshots or now - snapshots[-1][0] >= self._spacing_s:
            snapshots.append((now, dict(totals)))
        return result


class Exporter:
    """A prometheus_client collector: ``source``'s families, cleaned, plus the goodput gauge."""

    def __init__(
        self,
        source: Collector,
        goodput: GoodputWindow,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.goodput = goodput
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        totals: Totals = {}
        for family in self.source.collect():
            # The *_created samples double the output and Prometheus does not use them.
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            if family.name == SLO_FAMILY:
                totals = _slo_totals(family.samples)
            yield family
        ratios = self.goodput.ratios(totals, self._clock())
        gauge = GaugeMetricFamily(
            GOODPUT,
            f"Share of SLO requests that met their route's SLO over the last "
            f"{self.goodput.window_s:g} s (or since start).",
            labels=("route",),
        )
        for route, ratio in sorted(ratios.items()):
            gauge.add_metric((route,), ratio)
        yield gauge

    def render(self) -> bytes:
        """The exposition text (serve it with :data:`CONTENT_TYPE`)."""
        return generate_latest(self)


def _slo_totals(samples: Iterable[Sample]) -> Totals:
    totals: dict[str, list[float]] = {}
    for sample in samples:
        if not sample.name.endswith("_total"):
            continue
        pair = totals.setdefault(sample.labels.get("route", ""), [0.0, 0.0])
        pair[1] += sample.value
        if sample.labels.get("met") == "true":
            pair[0] += sample.value
    return {route: (met, total) for route, (met, total) in totals.items()}
