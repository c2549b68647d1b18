"""The choice itself: candidates already priced and predicted, put in attempt order. Pure.

* ``cheapest-within-slo``: those predicted to meet the target, cheapest first; then the rest, the
  most likely to meet first (the observed share of requests under the target);
* ``fastest``: by predicted latency (TTFT, or total when the route only bounds total);
* ``ordered``: policy order;
* ``weighted``: the first at random by ``weights`` (missing ones weigh 1), then policy order.

Unknown latency (never observed) counts as meeting the target and as fastest: optimism gets a
new candidate tried, and its first answers then speak for it. A candidate whose breaker is open
is dropped, unless every candidate's is.
"""

from __future__ import annotations

import math
from random import Random
from typing import Final

from gateway.providers.balancer import OPEN

CHEAPEST: Final = "cheapest-within-slo"
FASTEST: Final = "fastest"
ORDERED: Final = "ordered"
WEIGHTED: Final = "weighted"


class Option:
    """One candidate, evaluated for one request."""

    __slots__ = (
        "breaker",
        "cost_usd",
        "index",
        "last_seen",
        "likelihood",
        "meets",
        "name",
        "total_s",
        "ttft_s",
        "weight",
    )

    def __init__(
        self,
        name: str,
        index: int,
        cost_usd: float | None,
        ttft_s: float | None,
        total_s: float | None,
        meets: bool,
        breaker: str,
        weight: float = 1.0,
        likelihood: float = 1.0,
        last_seen: float | None = None,
    ) -> None:
        self.name = name
        self.index = index  # position in the route's candidates
        self.cost_usd = cost_usd  # None: no price known (ranks as the dearest)
        self.ttft_s = ttft_s
        self.total_s = total_s
        self.meets = meets
        self.breaker = breaker
        self.weight = weight
        self.likelihood = likelihood  # share of requests observed to meet the target
        self.last_seen = last_seen

    def __repr__(self) -> str:
        return (
            f"Option({self.name!r}, cost={self.cost_usd}, ttft={self.ttft_s}, meets={self.meets})"
        )


def _cost(option: Option) -> float:
    return math.inf if option.cost_usd is None else option.cost_usd


def _latency(option: Option, by_total: bool) -> float:
    value = option.total_s if by_total else option.ttft_s
    return 0.0 if value is None else value


def cheapest_within_slo(options: list[Option]) -> list[Option]:
    meeting = [option for option in options if option.meets]
    missing = [option for option in options if not option.meets]
    meeting.sort(key=lambda o: (_cost(o), _latency(o, False), o.index))
    missing.sort(key=lambda o: (-o.likelihood, _latency(o, False), _cost(o), o.index))
    return meeting + missing


def fastest(options: list[Option], by_total: bool = False) -> list[Option]:
    return sorted(options, key=lambda o: (_latency(o, by_total), _cost(o), o.index))


def weighted(options: list[Option], rng: Random) -> list[Option]:
    total = sum(option.weight for option in options)
    if total <= 0.0:
        return list(options)
    point = rng.random() * total
    for position, option in enumerate(options):
        point -= option.weight
        if point < 0.0 and option.weight > 0.0:
            return [option, *options[:position], *options[position + 1 :]]
    # Float rounding left a sliver: the last candidate with any weight.
    last = max(i for i, option in enumerate(options) if option.weight > 0.0)
    return [options[last], *options[:last], *options[last + 1 :]]


def order(
    strategy: str, options: list[Option], rng: Random, by_total: bool = False
) -> list[Option]:
    """Every candidate, in the order the strategy prefers them (breakers not yet considered)."""
    if strategy == CHEAPEST:
        return cheapest_within_slo(options)
    if strategy == FASTEST:
        return fastest(options, by_total)
    if strategy == WEIGHTED:
        return weighted(options, rng)
    return list(options)


def without_open(options: list[Option]) -> list[Option]:
    """Drop candidates whose breaker is open, unless that would leave none."""
    kept = [option for option in options if option.breaker != OPEN]
    return kept or options
