"""Live latency and health per deployment (and per replica), decaying, shared through Redis.

Every observation goes into log-bucketed histograms (TTFT, time per output token, total) whose
weights fade two ways at once:

* per routing decision ("tick"): each time a route that lists the deployment decides, older
  weight is multiplied by ``keep_per_tick`` (0.97). Counting decisions of the route, not the
  deployment's own observations, is what lets a rarely-tried candidate catch up: its few probes
  each stand for the many requests that went elsewhere meanwhile (importance weighting);
* per second: a half-life, so a quiet route forgets too: ``half_life_s`` (10 s) while the
  deployment is the router's natural choice, ``passed_over_half_life_s`` (1.5 s) while it is
  passed over. A passed-over candidate is refreshed only by occasional probes, and its latest
  probe must be able to speak for it: this is what bounds the win-back time at low rates.

Decay is forward (Cormode et al. 2009): instead of shrinking old weights, a per-deployment
``scale`` grows and new observations are added at weight ``scale``; lists are renormalised when
the scale gets large. An observation therefore costs a few float operations, never a pass over
the buckets. Why these two constants meet the routing bounds (move away within 50 requests, win
back within 200 requests or 30 s) is in ``router.py`` and proven by
``tests/unit/test_routing_simulation.py``.

Sharing: each gateway pushes its own decayed state (not deltas: a lost or repeated sync can then
neither lose nor double-count anything) and pulls the others', once per ``sync_interval_s``, in
one Lua call (``sync.py``). The merged view is local + remote; remote parts are replaced, not
accumulated, at each sync.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from gateway.routing import histogram
from gateway.routing.goodput import (
    R_ERRORS,
    R_MET,
    R_MISSED,
    R_OUT_N,
    R_OUT_SUM,
    R_PREDICTED_MISS,
    R_PROBES,
    R_REQUESTS,
    RouteStats,
)
from gateway.routing.histogram import BUCKETS, bucket

TTFT: Final = 0
TPOT: Final = BUCKETS
TOTAL: Final = 2 * BUCKETS
OK: Final = 3 * BUCKETS
ERR: Final = 3 * BUCKETS + 1
SIZE: Final = 3 * BUCKETS + 2
_SUM_INDEX: Final = {TTFT: 0, TPOT: 1, TOTAL: 2}

# Replica fields: ok, errors, sum of TTFT, TTFT count, sum of total, total count.
REPLICA_SIZE: Final = 6
# Forward-decay scales are renormalised past this (floats reach 1e308).
_RESCALE_AT: Final = 1e120
_MAX_EXPONENT: Final = 200.0
# An upstream that timed out was at least that slow: a lower bound is still evidence.
CENSORED_ERRORS: Final = frozenset({"upstream_timeout", "timeout"})


@dataclass(frozen=True, slots=True)
class StatsConfig:
    """How fast observations fade and how stats are shared (see the module docstring)."""

    keep_per_tick: float = 0.97
    half_life_s: float = 10.0
    # While a candidate is passed over, only its probes refresh it: judge it by the latest ones.
    passed_over_half_life_s: float = 1.5
    route_half_life_s: float = 60.0
    load_smoothing: float = 0.1
    sync_interval_s: float = 1.0
    # A gateway silent this long is forgotten (its snapshot deleted from Redis).
    forget_after_s: float = 60.0
    # Requests in flight on another gateway count only from a snapshot this recent.
    fresh_in_flight_s: float = 5.0


class ReplicaStats:
    """What one replica of a deployment did: counts and mean latencies (decayed like its parent)."""

    __slots__ = ("local", "merged")

    def __init__(self) -> None:
        self.local = [0.0] * REPLICA_SIZE
        self.merged = [0.0] * REPLICA_SIZE


class DeploymentStats:
    """One deployment's decayed histograms, health and load. Mutated in place, never copied."""

    __slots__ = (
        "_cache",
        "_grow_chosen",
        "_grow_passed_over",
        "_grow_per_s",
        "_grow_per_tick",
        "chosen",
        "in_flight",
        "last_seen",
        "last_total",
        "last_ttft",
        "load",
        "local",
        "local_seen",
        "merged",
        "name",
        "remote_in_flight",
        "replicas",
        "scale",
        "sums",
        "updated",
        "version",
    )

    def __init__(self, name: str, config: StatsConfig, now: float) -> None:
        self.name = name
        self.local = [0.0] * SIZE
        self.merged = [0.0] * SIZE
        self.sums = [0.0, 0.0, 0.0]  # merged weight per histogram: TTFT, TPOT, total
        self.scale = 1.0
        self.updated = now
        self._grow_chosen = math.log(2.0) / config.half_life_s
        self._grow_passed_over = math.log(2.0) / config.passed_over_half_life_s
        self._grow_per_s = self._grow_chosen
        self._grow_per_tick = 1.0 / config.keep_per_tick
        self.chosen = True  # the router's natural first choice at its last decision
        self.in_flight = 0
        self.remote_in_flight = 0
        self.load = 0.0  # smoothed requests in flight when requests started
        self.local_seen: float | None = None  # monotonic time of the last local outcome
        self.last_seen: float | None = None  # the same, counting other gateways'
        self.last_ttft: float | None = None  # the latest local observation, for exploration
        self.last_total: float | None = None
        self.version = 0
        self.replicas: dict[str, ReplicaStats] = {}
        self._cache: dict[tuple[int, float], tuple[int, float | None]] = {}

    # --- decay ---------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0.0:
            self.updated = now
            exponent = elapsed * self._grow_per_s
            if exponent < _MAX_EXPONENT:
                self.scale *= math.exp(exponent)
                if self.scale > _RESCALE_AT:
                    self._rescale()
            else:  # a long silence: shrink what is stored instead of overflowing the scale
                self._rescale(exponent)

    def set_chosen(self, chosen: bool, now: float) -> None:
        """Whether the router's last decision would send traffic here (picks the half-life)."""
        if chosen is not self.chosen:
            self.advance(now)
            self.chosen = chosen
            self._grow_per_s = self._grow_chosen if chosen else self._grow_passed_over

    def tick(self) -> None:
        """A route listing this deployment made a decision: older evidence weighs a bit less."""
        self.scale *= self._grow_per_tick
        if self.scale > _RESCALE_AT:
            self._rescale()

    def _rescale(self, exponent: float = 0.0) -> None:
        factor = math.exp(-exponent) / self.scale  # underflows to 0.0 (all forgotten) at worst
        self.local = [value * factor for value in self.local]
        self.merged = [value * factor for value in self.merged]
        self.sums = [value * factor for value in self.sums]
        for replica in self.replicas.values():
            replica.local = [value * factor for value in replica.local]
            replica.merged = [value * factor for value in replica.merged]
        self.scale = 1.0

    def weight(self, value: float) -> float:
        """A stored (forward-scaled) weight as it weighs now, given ``advance`` was called."""
        return value / self.scale

    # --- observations --------------------------------------------------------------------------

    def add(self, offset: int, seconds: float) -> None:
        index = offset + bucket(seconds)
        scale = self.scale
        self.local[index] += scale
        self.merged[index] += scale
        self.sums[_SUM_INDEX[offset]] += scale

    def count(self, index: int) -> None:
        self.local[index] += self.scale
        self.merged[index] += self.scale

    def replica(self, name: str) -> ReplicaStats:
        found = self.replicas.get(name)
        if found is None:
            found = self.replicas[name] = ReplicaStats()
        return found

    # --- reading -------------------------------------------------------------------------------

    def quantile(self, offset: int, q: float) -> float | None:
        """The ``q`` quantile (0..1) in seconds of one histogram, or None without data."""
        key = (offset, q)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        value = histogram.quantile(self.merged, offset, self.sums[_SUM_INDEX[offset]], q)
        self._cache[key] = (self.version, value)
        return value

    def share_below(self, offset: int, seconds: float) -> float:
        return histogram.share_below(self.merged, offset, self.sums[_SUM_INDEX[offset]], seconds)

    def has(self, offset: int) -> bool:
        return self.sums[_SUM_INDEX[offset]] > 0.0

    def error_rate(self) -> float:
        ok, err = self.merged[OK], self.merged[ERR]
        return err / (ok + err) if ok + err > 0.0 else 0.0

    def observations(self) -> float:
        """The decayed number of outcomes behind these stats (successes and errors)."""
        return (self.merged[OK] + self.merged[ERR]) / self.scale

    def recount(self) -> None:
        """Recompute the histogram sums from ``merged`` (after a sync replaced it)."""
        merged = self.merged
        self.sums = [
            math.fsum(merged[TTFT:TPOT]),
            math.fsum(merged[TPOT:TOTAL]),
            math.fsum(merged[TOTAL:OK]),
        ]
        self.version += 1


class RoutingStats:
    """Every deployment's and route's live stats in this process, plus other gateways' (synced).

    All methods are synchronous and cost microseconds; ``now`` defaults to ``time.monotonic()``.
    Pair every :meth:`started` with exactly one :meth:`finished`.
    """

    def __init__(
        self,
        config: StatsConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or StatsConfig()
        self.clock = clock
        self.deployments: dict[str, DeploymentStats] = {}
        self.routes: dict[str, RouteStats] = {}

    def deployment(self, name: str, now: float | None = None) -> DeploymentStats:
        found = self.deployments.get(name)
        if found is None:
            start = self.clock() if now is None else now
            found = self.deployments[name] = DeploymentStats(name, self.config, start)
        return found

    def route(self, name: str, now: float | None = None) -> RouteStats:
        found = self.routes.get(name)
        if found is None:
            start = self.clock() if now is None else now
            found = self.routes[name] = RouteStats(self.config.route_half_life_s, start)
        return found

    def started(self, deployment: str, replica: str | None = None) -> None:
        """A request is about to go to ``deployment`` (the replica is usually not known yet)."""
        stats = self.deployment(deployment)
        load = stats.in_flight + stats.remote_in_flight
        stats.load += self.config.load_smoothing * (load - stats.load)
        stats.in_flight += 1

    def finished(
        self,
        route: str | None,
        deployment: str,
        replica: str | None,
        *,
        ok: bool,
        ttft_s: float | None = None,
        total_s: float | None = None,
        output_tokens: int = 0,
        slo_met: bool | None = None,
        error_kind: str | None = None,
        now: float | None = None,
    ) -> None:
        """The request :meth:`started` on ``deployment`` is over.

        ``ttft_s``/``total_s`` are measured from the attempt's start (None when not known: no
        TTFT for a non-streamed answer, no total for a stream the client abandoned). ``ok`` is
        False for upstream failures (never for a client's 4xx); a timeout (``error_kind``
        ``upstream_timeout``) with ``total_s`` still counts as a latency of at least that much.
        ``slo_met`` (from :meth:`RoutePlan.met`) feeds the route's goodput.
        """
        now = self.clock() if now is None else now
        stats = self.deployment(deployment, now)
        if stats.in_flight > 0:
            stats.in_flight -= 1
        stats.advance(now)
        if ok:
            if ttft_s is not None:
                stats.add(TTFT, ttft_s)
                if total_s is not None and output_tokens >= 2 and total_s > ttft_s:
                    stats.add(TPOT, (total_s - ttft_s) / (output_tokens - 1))
            if total_s is not None:
                stats.add(TOTAL, total_s)
            stats.count(OK)
        else:
            stats.count(ERR)
            if error_kind in CENSORED_ERRORS and total_s is not None:
                stats.add(TTFT, total_s)
                stats.add(TOTAL, total_s)
        stats.version += 1
        if ok or (error_kind in CENSORED_ERRORS and total_s is not None):
            stats.last_ttft = ttft_s if ok else total_s
            stats.last_total = total_s
        stats.local_seen = now
        if stats.last_seen is None or now > stats.last_seen:
            stats.last_seen = now
        if replica is not None:
            self._replica_outcome(stats, replica, ok, ttft_s, total_s)
        if route is not None:
            self._route_outcome(route, deployment, now, ok, output_tokens, slo_met)

    def _replica_outcome(
        self,
        stats: DeploymentStats,
        replica: str,
        ok: bool,
        ttft_s: float | None,
        total_s: float | None,
    ) -> None:
        scale = stats.scale
        values = [0.0] * REPLICA_SIZE
        values[0 if ok else 1] = scale
        if ok and ttft_s is not None:
            values[2], values[3] = ttft_s * scale, scale
        if ok and total_s is not None:
            values[4], values[5] = total_s * scale, scale
        found = stats.replica(replica)
        for index, value in enumerate(values):
            if value:
                found.local[index] += value
                found.merged[index] += value

    def _route_outcome(
        self,
        route: str,
        deployment: str,
        now: float,
        ok: bool,
        output_tokens: int,
        slo_met: bool | None,
    ) -> None:
        stats = self.route(route, now)
        stats.advance(now)
        stats.add(R_REQUESTS)
        if not ok:
            stats.add(R_ERRORS)
        if slo_met is not None:
            stats.add(R_MET if slo_met else R_MISSED)
        if ok and output_tokens > 0:
            stats.add(R_OUT_SUM, output_tokens)
            stats.add(R_OUT_N)
        if ok:
            stats.served[deployment] = stats.served.get(deployment, 0.0) + stats.scale

    def judged(self, route: str, met: bool, now: float | None = None) -> None:
        """One client request of ``route`` met its target or not: goodput counts requests, once
        each, from their final outcome (a request that failed everywhere is a miss)."""
        now = self.clock() if now is None else now
        stats = self.route(route, now)
        stats.advance(now)
        stats.add(R_MET if met else R_MISSED)

    def decided(self, route: str, *, probe: bool, predicted_miss: bool, now: float) -> None:
        """The router planned a request of ``route`` (a probe, or one no candidate could meet)."""
        if not probe and not predicted_miss:
            return
        stats = self.route(route, now)
        stats.advance(now)
        if probe:
            stats.add(R_PROBES)
        if predicted_miss:
            stats.add(R_PREDICTED_MISS)

    def mean_output_tokens(self, route: str) -> float | None:
        stats = self.routes.get(route)
        return None if stats is None else stats.mean_output_tokens()

    def route_stats(self, route: str, now: float | None = None) -> dict[str, Any]:
        """Goodput and traffic of ``route`` over the recent window, all gateways merged."""
        now = self.clock() if now is None else now
        stats = self.route(route, now)
        stats.advance(now)
        return stats.view(route, self.config.route_half_life_s)
