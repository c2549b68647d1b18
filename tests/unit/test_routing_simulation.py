"""The routing bounds, proven in a deterministic simulation (synthetic clock and latencies).

Three candidates: a cheap pool (healthy ~80-200 ms TTFT), a mid-priced API (120-220 ms) and a
dear fast one (50-100 ms); the route wants TTFT <= 250 ms at a percentile. At request index
``SLOW_AT`` the cheap pool turns slow (500-900 ms); at ``RECOVER_AT`` it recovers. Each request's
outcome is fed back before the next decision, at a fixed spacing from 1 ms (1,000 req/s) to
4 s (0.25 req/s). The issue's bounds:

* after the pool turns slow, traffic moves away within 50 requests;
* after it recovers, it wins its traffic back within 200 requests or 30 s, whichever comes
  first (at low rates the 30 s, at high rates the 200 requests).

"Traffic" is the router's natural choice (the first attempt when it is not a probe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random
from typing import NamedTuple

import pytest

from gateway.policy.schema import Route, Slo
from gateway.routing import Breakers, Router, RoutingStats


class Price(NamedTuple):
    input_usd_per_token: float
    output_usd_per_token: float


PRICES = {
    "cheap": Price(0.05e-6, 0.20e-6),
    "mid": Price(0.15e-6, 0.60e-6),
    "dear": Price(2.50e-6, 10.0e-6),
}
WARMUP = 400
SLOW_FOR = 400
RECOVERED_FOR = 600
TARGET_S = 0.25


def latency(rng: Random, deployment: str, slow: bool) -> float:
    if deployment == "cheap":
        return rng.uniform(0.5, 0.9) if slow else rng.uniform(0.08, 0.2)
    if deployment == "mid":
        return rng.uniform(0.12, 0.22)
    return rng.uniform(0.05, 0.10)


@dataclass
class Run:
    """Who got each request, and when (seconds since the run started)."""

    chosen: list[str] = field(default_factory=list)
    probes: list[bool] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def natural(self, index: int) -> str | None:
        return None if self.probes[index] else self.chosen[index]


def simulate(spacing_s: float, percentile: float, seed: int = 7, slow_for: int = SLOW_FOR) -> Run:
    clock = [1000.0]
    stats = RoutingStats(clock=lambda: clock[0])
    router = Router(stats, Breakers(clock=lambda: clock[0]), Random(seed), clock=lambda: clock[0])
    route = Route(
        candidates=["cheap", "mid", "dear"],
        slo=Slo(ttft_ms=TARGET_S * 1000, percentile=percentile),
    )
    rng = Random(seed)
    run = Run()
    for index in range(WARMUP + SLOW_FOR + RECOVERED_FOR):
        clock[0] += spacing_s
        slow = WARMUP <= index < WARMUP + slow_for
        plan = router.plan("chat", route, PRICES, prompt_tokens=500, expected_output_tokens=100)
        attempt = plan.attempts[0]
        run.chosen.append(attempt.deployment)
        run.probes.append(attempt.probe)
        run.times.append(clock[0])
        stats.started(attempt.deployment)
        ttft = latency(rng, attempt.deployment, slow)
        stats.finished(
            "chat",
            attempt.deployment,
            None,
            ok=True,
            ttft_s=ttft,
            total_s=ttft + 0.5,
            output_tokens=100,
            slo_met=plan.met(ttft, ttft + 0.5),
        )
    return run


def moved_away_after(run: Run) -> int:
    """Requests after the slowdown until the last natural choice of the cheap pool."""
    last = WARMUP - 1
    for index in range(WARMUP, WARMUP + SLOW_FOR):
        if run.natural(index) == "cheap":
            last = index
    return last - WARMUP + 1


def won_back_after(run: Run, start: int) -> tuple[int, float]:
    """(requests, seconds) after recovery until the cheap pool is the natural choice again."""
    for index in range(start, len(run.chosen)):
        if run.natural(index) == "cheap":
            return index - start + 1, run.times[index] - run.times[start - 1]
    raise AssertionError("the cheap pool never won its traffic back")


# From 1,000 requests/s down to one every 9 s.
SPACINGS = [0.001, 0.01, 0.05, 0.2, 1.0, 4.0, 9.0]
# The recovery lands at different moments of the probing cycle.
SLOW_FOR_VARIANTS = [SLOW_FOR, SLOW_FOR + 7, SLOW_FOR + 13]


@pytest.mark.parametrize("slow_for", SLOW_FOR_VARIANTS)
@pytest.mark.parametrize("percentile", [50.0, 90.0, 95.0, 99.0])
@pytest.mark.parametrize("spacing_s", SPACINGS)
def test_traffic_moves_away_and_comes_back_within_the_bounds(
    spacing_s: float, percentile: float, slow_for: int
) -> None:
    run = simulate(spacing_s, percentile, slow_for=slow_for)
    before = [run.natural(i) for i in range(WARMUP - 200, WARMUP)]
    moved = moved_away_after(run)
    start = WARMUP + slow_for
    back_requests, back_s = won_back_after(run, start)
    after_win = start + back_requests - 1
    kept = [run.natural(i) for i in range(after_win, min(after_win + 200, len(run.chosen)))]
    slow_phase = range(WARMUP + 50, start)
    probes_while_slow = sum(run.chosen[i] == "cheap" for i in slow_phase)
    print(
        f"\nspacing {spacing_s:>6}s p{percentile:g}: moved away after {moved} requests; won back "
        f"after {back_requests} requests / {back_s:.1f} s; cheap share before "
        f"{before.count('cheap') / len(before):.0%}, after {kept.count('cheap') / len(kept):.0%}; "
        f"probes while slow {probes_while_slow}/{len(slow_phase)}"
    )
    assert before.count("cheap") >= 0.9 * len(before)  # healthy and cheapest: it wins
    assert moved <= 50
    # Whichever comes first: by the 200th request, and by the first request 30 s after.
    assert back_requests <= 200
    assert back_s < 30 + spacing_s  # no later than the first request 30 s after the recovery
    assert kept.count("cheap") >= 0.85 * len(kept)  # and it keeps it


def test_the_simulation_is_deterministic() -> None:
    assert simulate(0.01, 95.0).chosen == simulate(0.01, 95.0).chosen
