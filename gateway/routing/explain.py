"""The admin views of routing as plain dicts (the API layer renders them as JSON).

``describe`` is GET /admin/routes/{route}/explain?prompt_tokens=N: for each candidate its price
and cost for such a request, predicted latency at the route's percentile, health (error rate,
observations, requests in flight, staleness), breaker state, rank, and which one would win.
"""

from __future__ import annotations

from typing import Any

from gateway.routing.breaker import Breakers
from gateway.routing.plan import Prices
from gateway.routing.predict import queue_factor
from gateway.routing.select import Option
from gateway.routing.stats import RoutingStats


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def _usd(value: float | None) -> float | None:
    return None if value is None else round(value, 10)


def describe(
    *,
    route_name: str,
    strategy: str,
    percentile: float,
    ttft_target_s: float | None,
    total_target_s: float | None,
    prompt_tokens: int,
    expected_output_tokens: int | None,
    mean_output_tokens: float | None,
    options: list[Option],
    ranked: list[Option],
    prices: Prices,
    stats: RoutingStats,
    breakers: Breakers,
    now: float,
) -> dict[str, Any]:
    """The explain view (see the module docstring). ``ranked`` is the strategy's order."""
    rank = {option.name: position + 1 for position, option in enumerate(ranked)}
    candidates: list[dict[str, Any]] = []
    for option in options:
        deployment = stats.deployment(option.name, now)
        price = prices.get(option.name)
        candidates.append(
            {
                "deployment": option.name,
                "rank": rank.get(option.name),
                "price": None
                if price is None
                else {
                    "input_usd_per_mtok": round(price.input_usd_per_token * 1e6, 6),
                    "output_usd_per_mtok": round(price.output_usd_per_token * 1e6, 6),
                },
                "cost_usd": _usd(option.cost_usd),
                "predicted": {
                    "ttft_ms": _ms(option.ttft_s),
                    "total_ms": _ms(option.total_s),
                    "queue_factor": round(queue_factor(deployment), 3),
                },
                "meets_slo": option.meets,
                "meet_probability": round(option.likelihood, 4),
                "health": {
                    "observations": round(deployment.observations(), 2),
                    "error_rate": round(deployment.error_rate(), 4),
                    "in_flight": deployment.in_flight + deployment.remote_in_flight,
                    "last_observed_s_ago": None
                    if deployment.last_seen is None
                    else round(max(0.0, now - deployment.last_seen), 3),
                },
                "breaker": breakers.snapshot(option.name, now=now),
                "weight": option.weight,
            }
        )
    winner = ranked[0] if ranked else None
    return {
        "route": route_name,
        "strategy": strategy,
        "slo": {
            "ttft_ms": _ms(ttft_target_s),
            "total_ms": _ms(total_target_s),
            "percentile": percentile,
        },
        "prompt_tokens": prompt_tokens,
        "expected_output_tokens": expected_output_tokens,
        "mean_output_tokens": None if mean_output_tokens is None else round(mean_output_tokens, 1),
        "winner": None if winner is None else winner.name,
        "winner_meets_slo": None if winner is None else winner.meets,
        "candidates": candidates,
    }
