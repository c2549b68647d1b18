"""The app's metrics: :meth:`Metrics.observe` per finished request, setters for the gauges that
other parts own, and the exposition GET /metrics serves.

Cost per request: one tuple, one dict lookup and a few additions into plain-number buffers
(``gateway.metrics.series``), resolved once per distinct ``(route, deployment, team, status,
error_type, cache)`` tuple and cached. No label validation, no string formatting, no locks.
:meth:`Metrics.flush` moves the buffers into prometheus_client before each scrape and, with
several workers, every ``flush_s`` seconds in each worker (see :meth:`Metrics.start`).

Label values are bounded (``gateway.metrics.labels``); the cache of raw tuples is bounded too
(cleared past :data:`MAX_CACHED`), so hostile values cost time, never memory.

Call ``observe`` and the setters from the event-loop thread: the buffers are plain attributes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from prometheus_client.registry import Collector

from gateway.metrics.export import CONTENT_TYPE, Exporter, GoodputWindow
from gateway.metrics.instruments import Instruments
from gateway.metrics.labels import LabelValues
from gateway.metrics.multiprocess import FileSource, active_dir, forget_self
from gateway.metrics.series import Latency, RouteCounts, Series
from gateway.record import RequestRecord

log = logging.getLogger("tollgate.metrics")

MAX_CACHED = 4096
STATUSES = (
    "ok",
    "cache_hit",
    "error",
    "client_disconnect",
    "upstream_error",
    "upstream_client_error",
    "rejected_budget",
    "rejected_rate",
    "unauthorized",
    "invalid_request",
)
SUCCEEDED = frozenset(("ok", "cache_hit"))  # timed in the latency histograms
REJECTED = frozenset(("rejected_budget", "rejected_rate"))
CACHE_RESULTS = ("hit", "miss", "bypass")
WINDOWS = ("minute", "hour", "day", "week", "month")
UNITS = ("tokens", "usd", "requests")

# A callable run before each scrape (and, with several workers, every few seconds) to copy
# state another component owns into the gauges (set_in_flight, set_ledger, ...).
Updater = Callable[[], Awaitable[None] | None]
K = TypeVar("K")
V = TypeVar("V")


class Metrics:
    """One app's instruments, label bounds, caches and exporter. Build one per app."""

    def __init__(
        self, *, goodput_window_s: float = 300.0, flush_s: float = 1.0, refresh_s: float = 5.0
    ) -> None:
        self.instruments = Instruments.create()
        self.multiprocess_dir = active_dir()
        # Until bind_names() is called, policy names are admitted first come, up to a cap.
        self.routes = LabelValues(cap=64)
        self.deployments = LabelValues(("cache",), cap=64)
        self.teams = LabelValues(cap=64)
        self.replicas = LabelValues(("all",), cap=256)
        self.statuses = LabelValues(STATUSES, cap=16)
        self.rejection_kinds = LabelValues(cap=32)
        self.error_types = LabelValues(cap=64)
        self.cache_results = LabelValues(CACHE_RESULTS)
        self.windows = LabelValues(WINDOWS)
        self.units = LabelValues(UNITS)
        self._series: dict[tuple[Any, ...], Series] = {}
        self._by_labels: dict[tuple[str, ...], Series] = {}
        self._latency: dict[tuple[str, str], Latency] = {}
        self._route: dict[str, RouteCounts] = {}
        # Children of the rarely-set instruments, by raw values (bounded like _series).
        self._counters: dict[tuple[str | None, ...], Counter] = {}
        self._gauges: dict[tuple[str | None, ...], Gauge] = {}
        self._updaters: list[Updater] = []
        self._failed_at: dict[int, float] = {}
        self._flush_s = flush_s
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None
        self._render_lock = asyncio.Lock()
        source: Collector = (
            FileSource(self.multiprocess_dir)
            if self.multiprocess_dir
            else self.instruments.registry
        )
        self.exporter = Exporter(source, GoodputWindow(goodput_window_s))

    # --- per request ----------------------------------------------------------------------

    def observe(self, r: RequestRecord) -> None:
        """Count one finished request (any outcome). Costs a couple of microseconds."""
        status = r.status
        if r.http_status >= 400 and status in SUCCEEDED:
            status = "error"
        key = (r.route, r.deployment, r.team, status, r.error_type, r.cache)
        s = self._series.get(key)
        if s is None:
            s = self._new_series(key)
        s.requests += 1
        s.prompt += r.prompt_tokens
        s.completion += r.completion_tokens
        s.cached += r.cached_tokens
        s.cost += r.cost_usd
        s.saved += r.cost_saved_usd
        if s.rejected:
            s.rejections += 1
        met = r.slo_met
        if met is not None:
            if met:
                s.route.met += 1
            else:
                s.route.missed += 1
        if r.cache is not None:
            result = self.cache_results(r.cache)
            cache = s.route.cache
            cache[result] = cache.get(result, 0) + 1
        latency = s.latency
        if latency is None:
            return
        ttft, total = r.ttft_ms, r.total_ms
        if ttft is not None:
            latency.ttft.add(ttft / 1000)
        if total is not None:
            latency.duration.add(total / 1000)
            if r.stream and ttft is not None and r.completion_tokens > 1:
                latency.tpot.add((total - ttft) / 1000 / (r.completion_tokens - 1))
        # RequestRecord.overhead_ms is the pipeline's measure of its own time (see the README);
        # read defensively so records from before that field existed still count.
        overhead = getattr(r, "overhead_ms", None)
        if overhead is not None:
            latency.overhead.add(overhead / 1000)

    def _new_series(self, key: tuple[Any, ...]) -> Series:
        route_raw, deployment_raw, team_raw, status_raw, error_type, cache = key
        labels = (
            self.routes(route_raw),
            self.deployments(deployment_raw),
            self.teams(team_raw),
            self.statuses(status_raw),
        )
        kind = self.rejection_kinds(error_type or status_raw) if status_raw in REJECTED else None
        # Cache hits are timed under deployment "cache", so a deployment's latency stays its own.
        timed_as = "cache" if cache == "hit" else labels[1]
        full = (*labels, kind or "", timed_as)
        s = self._by_labels.get(full)
        if s is None:
            route = self._route.get(labels[0])
            if route is None:
                route = self._route[labels[0]] = RouteCounts(self.instruments, labels[0])
            latency = None
            if labels[3] in SUCCEEDED:
                latency = self._latency.get((labels[0], timed_as))
                if latency is None:
                    latency = Latency(self.instruments, labels[0], timed_as)
                    self._latency[labels[0], timed_as] = latency
            s = self._by_labels[full] = Series(self.instruments, labels, route, latency, kind)
        if len(self._series) >= MAX_CACHED:
            self._series.clear()
        self._series[key] = s
        return s

    def flush(self) -> None:
        """Move what requests added into the exported values (cheap; bounded by the series)."""
        for series in self._by_labels.values():
            series.flush()
        for route in self._route.values():
            route.flush()
        for latency in self._latency.values():
            latency.flush()

    def upstream_error(self, deployment: str | None, kind: str | None) -> None:
        """Count one failed upstream attempt (call it for every attempt that fails)."""
        key = ("upstream_error", deployment, kind)
        child = self._counters.get(key)
        if child is None:
            labels = (self.deployments(deployment), self.error_types(kind))
            child = _keep(self._counters, key, self.instruments.upstream_errors.labels(*labels))
        child.inc()

    # --- gauges owned by other components -------------------------------------------------

    def set_budget_remaining(self, team: str, window: str, unit: str, remaining: float) -> None:
        """What is left of one of ``team``'s budgets (unit: tokens | usd | requests)."""
        key = ("budget_remaining", team, window, unit)
        child = self._gauges.get(key)
        if child is None:
            labels = (self.teams(team), self.windows(window), self.units(unit))
            child = _keep(self._gauges, key, self.instruments.budget_remaining.labels(*labels))
        child.set(remaining)

    def set_breaker_open(self, deployment: str, replica: str | None, is_open: bool) -> None:
        """A deployment's (``replica=None``) or one replica's breaker state."""
        gauge = self._replica_gauge("breaker_open", deployment, replica or "all")
        gauge.set(1.0 if is_open else 0.0)

    def set_in_flight(self, deployment: str, replica: str, count: int) -> None:
        """Upstream requests in flight on one replica of a deployment."""
        self._replica_gauge("in_flight", deployment, replica).set(count)

    def set_ledger(self, backlog_rows: int, lag_seconds: float) -> None:
        """The usage ledger's rows not yet in the database, and the age of the oldest."""
        self.instruments.ledger_backlog.set(backlog_rows)
        self.instruments.ledger_lag.set(lag_seconds)

    def _replica_gauge(self, name: str, deployment: str, replica: str) -> Gauge:
        key = (name, deployment, replica)
        child = self._gauges.get(key)
        if child is None:
            gauge: Gauge = getattr(self.instruments, name)
            labels = (self.deployments(deployment), self.replicas(replica))
            child = _keep(self._gauges, key, gauge.labels(*labels))
        return child

    # --- policy names ---------------------------------------------------------------------

    def bind_names(
        self,
        *,
        routes: Iterable[str],
        deployments: Iterable[str],
        teams: Iterable[str],
        replicas: Iterable[str] | None = None,
    ) -> None:
        """Allow exactly the policy's names as labels (others export as ``other``).

        Call it with the policy at start and after every reload.
        """
        self.routes.bind(routes)
        self.deployments.bind(deployments)
        self.teams.bind(teams)
        if replicas is not None:
            self.replicas.bind(replicas)
        self._series.clear()
        self._counters.clear()
        self._gauges.clear()

    # --- scraping -------------------------------------------------------------------------

    def add_updater(self, updater: Updater) -> None:
        """Run ``updater`` before each scrape (and periodically with several workers)."""
        self._updaters.append(updater)

    async def refresh(self, timeout_s: float = 2.0) -> None:
        """Run the updaters; one that fails or hangs is logged (once a minute), not raised."""
        for index, updater in enumerate(self._updaters):
            try:
                result = updater()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, timeout_s)
            except Exception as exc:  # a broken updater must not break /metrics
                now = time.monotonic()
                if now - self._failed_at.get(index, -60.0) >= 60.0:
                    self._failed_at[index] = now
                    log.warning(
                        "metrics updater failed",
                        extra={"fields": {"updater": _name(updater), "error": repr(exc)[:200]}},
                    )

    async def render(self) -> bytes:
        """The exposition for GET /metrics (serve with :data:`content_type`)."""
        await self.refresh()
        self.flush()
        async with self._render_lock:
            # Rendering takes milliseconds with many series: keep it off the event loop.
            return await asyncio.to_thread(self.exporter.render)

    content_type = CONTENT_TYPE

    async def start(self) -> None:
        """With several workers: flush every ``flush_s`` and run the updaters every
        ``refresh_s`` seconds in this worker, since a scrape reaches one worker only and reads
        the others' values from their files. In one process, nothing to do (a scrape flushes).
        """
        if self.multiprocess_dir and self._task is None:
            self._task = asyncio.create_task(self._keep_files_current(), name="metrics-flush")

    async def aclose(self) -> None:
        """Stop the background task; with several workers, write what is pending and withdraw
        this worker's gauges (its counters stay in the totals)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.multiprocess_dir:
            self.flush()
            forget_self(self.multiprocess_dir)

    async def _keep_files_current(self) -> None:
        refreshed = -self._refresh_s
        while True:
            self.flush()
            now = time.monotonic()
            if now - refreshed >= self._refresh_s:
                refreshed = now
                await self.refresh()
            await asyncio.sleep(self._flush_s)


def _keep(cache: dict[K, V], key: K, child: V) -> V:
    if len(cache) >= MAX_CACHED:
        cache.clear()
    cache[key] = child
    return child


def _name(updater: Updater) -> str:
    return getattr(updater, "__qualname__", type(updater).__name__)
