"""The router: for one request of a route, the deployments to try, in order. Pure over memory.

``Router.plan`` prices every candidate for this request (prompt tokens x input price + expected
output tokens x output price), predicts its latency at the route's percentile (``predict.py``),
reads its breaker, orders the candidates by the route's strategy (``select.py``) and adds an
exploration probe now and then. No I/O, no awaits: tens of microseconds.

Exploration, and why the bounds hold (``tests/unit/test_routing_simulation.py`` proves them at
1,000 to 0.1 requests/s, p50 to p99):

* a probe goes to a candidate that could win if it were judged afresh (cheaper than the winner
  but predicted to miss; for ``fastest``, any other): on every ``explore_every``-th decision
  (25: 4% of traffic), and when it has not been observed for ``probe_after_s`` (20 s), or for
  ``confirm_after_s`` (2 s) if its latest answer met the target (such a probe costs no miss).
  Never two probes in a row. A probe is an extra first attempt; the natural order follows it;
* move away (the winner turns slow): its histogram decays by 0.97 per decision, so k slow
  answers make up ``1 - 0.97^k`` of its weight; its q-percentile crosses the target once that
  exceeds ``1 - q``: 2 answers for p95, 23 for p50 (at low rates the 10 s half-life makes it
  sooner), all within 50 requests;
* win back by requests: probes land every 25 decisions while the candidate's old weight decays
  by 0.97 per decision (0.97^100 = 5%, 0.97^150 = 1%), so fast probes outweigh the slow past
  within 100 (p95) to 175 (p99) decisions at most;
* win back by time: a passed-over candidate's weight halves every 1.5 s, so a probe 20 s after
  the previous one outweighs everything before it 10,000 to 1, and confirmation probes follow
  every 2 s: the first probe after the recovery (at most 20 s later) wins the traffic back,
  within 30 s at any request rate. Below one request per ~10 s that means about every other
  request probes a passed-over cheaper candidate: the price of the 30 s bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

from gateway.errors import InvalidRequest
from gateway.providers.balancer import OPEN
from gateway.routing import explain, select
from gateway.routing.breaker import Breakers
from gateway.routing.plan import Attempt, Prices, RoutePlan, RouteSpec, tightened
from gateway.routing.predict import meet_probability, predict, queue_factor
from gateway.routing.select import CHEAPEST, FASTEST, Option
from gateway.routing.stats import DeploymentStats, RoutingStats


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Exploration and defaults (see the module docstring for how they bound the reaction)."""

    explore_every: int = 25
    probe_after_s: float = 20.0
    # A candidate whose latest answer met the target may have recovered: confirm it sooner
    # (such probes cost no SLO miss).
    confirm_after_s: float = 2.0
    default_output_tokens: int = 256


class _RouteState:
    """A route's compiled settings (rebuilt when the policy's Route object changes) and memory."""

    __slots__ = (
        "attempts",
        "by_total",
        "candidates",
        "decisions",
        "last_was_probe",
        "percentile",
        "probed_at",
        "q",
        "route",
        "stats",
        "strategy",
        "total_s",
        "ttft_s",
        "weights",
    )

    def __init__(self, route: RouteSpec, stats: RoutingStats) -> None:
        self.route = route
        self.candidates = tuple(route.candidates)
        self.stats: tuple[DeploymentStats, ...] = tuple(
            stats.deployment(name) for name in self.candidates
        )
        self.weights = tuple(route.weights.get(name, 1.0) for name in self.candidates)
        slo = route.slo
        self.percentile = slo.percentile if slo is not None else 95.0
        self.q = self.percentile / 100.0
        self.ttft_s = slo.ttft_ms / 1000.0 if slo is not None and slo.ttft_ms else None
        self.total_s = slo.total_ms / 1000.0 if slo is not None and slo.total_ms else None
        self.by_total = self.ttft_s is None and self.total_s is not None
        self.strategy: str = route.strategy
        # None: every candidate once (those with an open breaker left out); else 1 + retries,
        # going around the candidates again if retries asks for more.
        self.attempts = None if route.retries is None else 1 + route.retries
        self.decisions = 0
        self.last_was_probe = False
        self.probed_at: dict[str, float] = {}


class Router:
    """Plans each request's attempts. One per app; holds no I/O handles.

    ``rng`` drives the ``weighted`` strategy (seed it in tests); ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        stats: RoutingStats,
        breakers: Breakers,
        rng: Random | None = None,
        config: RouterConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.breakers = breakers
        self.rng = rng or Random()
        self.config = config or RouterConfig()
        self._clock = clock
        self._routes: dict[str, _RouteState] = {}

    def _state(self, name: str, route: RouteSpec) -> _RouteState:
        state = self._routes.get(name)
        if state is None or state.route is not route:
            fresh = _RouteState(route, self.stats)
            if state is not None:
                fresh.decisions, fresh.probed_at = state.decisions, state.probed_at
            state = self._routes[name] = fresh
        return state

    # --- planning ------------------------------------------------------------------------------

    def plan(
        self,
        route_name: str,
        route: RouteSpec,
        prices: Prices,
        prompt_tokens: int,
        expected_output_tokens: int | None = None,
        slo_ttft_override_ms: float | None = None,
        pinned: str | None = None,
        now: float | None = None,
    ) -> RoutePlan:
        """The attempts for one request of ``route_name``.

        ``expected_output_tokens``: the request's own ``max_tokens`` if it set one, else None
        (the route's observed mean is used). ``slo_ttft_override_ms`` (x-tollgate-slo-ttft-ms)
        can only tighten the route's TTFT target. ``pinned`` (x-tollgate-deployment) must be one
        of the route's candidates (:class:`InvalidRequest` otherwise) and is the only attempt.
        """
        now = self._clock() if now is None else now
        state = self._state(route_name, route)
        ttft_target = tightened(state.ttft_s, slo_ttft_override_ms)
        options = self._evaluate(
            route_name, state, prices, prompt_tokens, expected_output_tokens, ttft_target, now
        )
        for deployment in state.stats:
            deployment.tick()
        state.decisions += 1
        if pinned is not None:
            return self._pinned(route_name, state, options, pinned, ttft_target)
        ranked = select.without_open(
            select.order(state.strategy, options, self.rng, state.by_total)
        )
        winner = ranked[0].index
        for index, deployment in enumerate(state.stats):
            deployment.set_chosen(index == winner, now)
        probe = None
        if state.strategy in (CHEAPEST, FASTEST) and len(ranked) > 1:
            probe = self._explore(state, ranked, now)
        state.last_was_probe = probe is not None
        limit = len(ranked) if state.attempts is None else state.attempts
        chosen = ranked[:limit]
        while len(chosen) < limit:  # more retries than candidates: go around again
            chosen.append(ranked[len(chosen) % len(ranked)])
        if probe is not None:
            # A probe is an extra first attempt: exploring must not cost the client a retry.
            chosen = [probe, *(option for option in chosen if option is not probe)][: limit + 1]
        predicted_miss = not ranked[0].meets
        if probe is not None or predicted_miss:
            self.stats.decided(
                route_name, probe=probe is not None, predicted_miss=predicted_miss, now=now
            )
        return RoutePlan(
            route=route_name,
            strategy=state.strategy,
            attempts=tuple(_attempt(option, option is probe) for option in chosen),
            ttft_target_s=ttft_target,
            total_target_s=state.total_s,
            percentile=state.percentile,
            predicted_miss=predicted_miss,
            probe=probe is not None,
        )

    def _evaluate(
        self,
        route_name: str,
        state: _RouteState,
        prices: Prices,
        prompt_tokens: int,
        expected_output_tokens: int | None,
        ttft_target: float | None,
        now: float,
    ) -> list[Option]:
        output_for_cost: float
        if expected_output_tokens is not None:
            output_for_cost = expected_output_tokens
        else:
            mean = self.stats.mean_output_tokens(route_name)
            output_for_cost = self.config.default_output_tokens if mean is None else mean
        output_for_latency = (
            None if expected_output_tokens is None else float(expected_output_tokens)
        )
        total_target, q = state.total_s, state.q
        breakers = self.breakers
        options: list[Option] = []
        for index, name in enumerate(state.candidates):
            stats = state.stats[index]
            factor = queue_factor(stats)
            ttft, total = predict(stats, q, output_for_latency, factor)
            meets = (ttft_target is None or ttft is None or ttft <= ttft_target) and (
                total_target is None or total is None or total <= total_target
            )
            price = prices.get(name)
            cost = (
                None
                if price is None
                else prompt_tokens * price.input_usd_per_token
                + output_for_cost * price.output_usd_per_token
            )
            options.append(
                Option(
                    name,
                    index,
                    cost,
                    ttft,
                    total,
                    meets,
                    breakers.state(name, now=now),
                    state.weights[index],
                    1.0 if meets else meet_probability(stats, ttft_target, total_target, factor),
                    stats.last_seen,
                )
            )
        return options

    def _explore(self, state: _RouteState, ranked: list[Option], now: float) -> Option | None:
        """A candidate to probe with this request, or None."""
        winner = ranked[0]
        if state.strategy == FASTEST or not winner.meets:
            targets = [option for option in ranked[1:] if option.breaker != OPEN]
        else:
            # Only a cheaper candidate that now misses could take the traffic back.
            ceiling = math.inf if winner.cost_usd is None else winner.cost_usd
            targets = [
                option
                for option in ranked[1:]
                if not option.meets
                and option.breaker != OPEN
                and (option.cost_usd is not None and option.cost_usd < ceiling)
            ]
        if not targets:
            return None

        def freshness(option: Option) -> float:
            seen = option.last_seen if option.last_seen is not None else -math.inf
            return max(seen, state.probed_at.get(option.name, -math.inf))

        config = self.config
        if state.decisions % config.explore_every == 0:
            target = min(targets, key=freshness)
        elif state.last_was_probe:
            return None
        else:
            due = [
                option
                for option in targets
                if now - freshness(option)
                >= (
                    config.confirm_after_s
                    if self._promising(state, option)
                    else config.probe_after_s
                )
            ]
            if not due:
                return None
            target = min(due, key=freshness)
        state.probed_at[target.name] = now
        return target

    @staticmethod
    def _promising(state: _RouteState, option: Option) -> bool:
        """Did the candidate's latest answer meet the route's target?"""
        stats = state.stats[option.index]
        first = stats.last_ttft if stats.last_ttft is not None else stats.last_total
        if first is None or (state.ttft_s is not None and first > state.ttft_s):
            return False
        total = stats.last_total
        return state.total_s is None or total is None or total <= state.total_s

    def _pinned(
        self,
        route_name: str,
        state: _RouteState,
        options: list[Option],
        pinned: str,
        ttft_target: float | None,
    ) -> RoutePlan:
        if pinned not in state.candidates:
            listed = ", ".join(state.candidates)
            raise InvalidRequest(
                f"Deployment '{pinned}' is not a candidate of the model '{route_name}' "
                f"(its candidates: {listed}).",
                param="x-tollgate-deployment",
                code="deployment_not_allowed",
            )
        option = options[state.candidates.index(pinned)]
        return RoutePlan(
            route=route_name,
            strategy=state.strategy,
            attempts=(_attempt(option, False),),
            ttft_target_s=ttft_target,
            total_target_s=state.total_s,
            percentile=state.percentile,
            predicted_miss=not option.meets,
            probe=False,
            pinned=True,
        )

    # --- views ---------------------------------------------------------------------------------

    def explain(
        self,
        route_name: str,
        route: RouteSpec,
        prices: Prices,
        prompt_tokens: int,
        expected_output_tokens: int | None = None,
        slo_ttft_override_ms: float | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """GET /admin/routes/{route}/explain: every candidate's price, prediction, health, winner.

        Changes nothing: no decay tick, no exploration.
        """
        now = self._clock() if now is None else now
        state = self._state(route_name, route)
        ttft_target = tightened(state.ttft_s, slo_ttft_override_ms)
        options = self._evaluate(
            route_name, state, prices, prompt_tokens, expected_output_tokens, ttft_target, now
        )
        ranked = select.without_open(
            select.order(state.strategy, options, self.rng, state.by_total)
        )
        return explain.describe(
            route_name=route_name,
            strategy=state.strategy,
            percentile=state.percentile,
            ttft_target_s=ttft_target,
            total_target_s=state.total_s,
            prompt_tokens=prompt_tokens,
            expected_output_tokens=expected_output_tokens,
            mean_output_tokens=self.stats.mean_output_tokens(route_name),
            options=options,
            ranked=ranked,
            prices=prices,
            stats=self.stats,
            breakers=self.breakers,
            now=now,
        )

    def route_stats(self, route_name: str, now: float | None = None) -> dict[str, Any]:
        """GET /admin/routes/{route}/stats: goodput, traffic shares, probes, predicted misses."""
        return self.stats.route_stats(route_name, now)


def _attempt(option: Option, probe: bool) -> Attempt:
    return Attempt(
        deployment=option.name,
        cost_usd=option.cost_usd,
        ttft_s=option.ttft_s,
        total_s=option.total_s,
        meets_slo=option.meets,
        probe=probe,
    )
