"""Choosing per strategy over synthetic stats: cheapest within SLO, fastest, ordered, weighted."""

from __future__ import annotations

from collections import Counter
from random import Random
from typing import NamedTuple

import pytest

from gateway.errors import InvalidRequest
from gateway.policy.schema import Route, Slo
from gateway.routing import Breakers, Router, RouterConfig, RoutingStats, parse_ttft_override

NOW = 1000.0
# USD per token: cheap < mid < dear.


class Price(NamedTuple):
    input_usd_per_token: float
    output_usd_per_token: float


PRICES = {
    "cheap": Price(0.10e-6, 0.40e-6),
    "mid": Price(0.50e-6, 2.00e-6),
    "dear": Price(3.00e-6, 12.0e-6),
}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make(config: RouterConfig | None = None) -> tuple[Router, RoutingStats, Breakers, Clock]:
    clock = Clock()
    stats = RoutingStats(clock=clock)
    breakers = Breakers(clock=clock)
    # No exploration unless a test asks: these tests are about the natural choice.
    router = Router(
        stats, breakers, Random(3), config or RouterConfig(explore_every=10**9), clock=clock
    )
    return router, stats, breakers, clock


def observe(stats: RoutingStats, deployment: str, ttft_ms: float, count: int = 40) -> None:
    """``count`` answers around ``ttft_ms`` (+-10%), each 300 ms long in total."""
    for index in range(count):
        ttft = ttft_ms * (0.9 + 0.2 * index / count) / 1000
        stats.started(deployment)
        stats.finished(
            "chat", deployment, "r1", ok=True, ttft_s=ttft, total_s=ttft + 0.3, output_tokens=50
        )


def route(**fields: object) -> Route:
    defaults: dict[str, object] = {
        "candidates": ["cheap", "mid", "dear"],
        "slo": Slo(ttft_ms=250, percentile=95),
    }
    defaults.update(fields)
    return Route.model_validate(defaults)


def three_pools(stats: RoutingStats) -> None:
    observe(stats, "cheap", 180)
    observe(stats, "mid", 100)
    observe(stats, "dear", 50)


def first(router: Router, chat: Route, **kwargs: object) -> str:
    plan = router.plan("chat", chat, PRICES, prompt_tokens=1000, **kwargs)  # type: ignore[arg-type]
    return plan.attempts[0].deployment


def test_the_cheapest_candidate_meeting_the_target_wins() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    plan = router.plan("chat", route(), PRICES, prompt_tokens=1000, expected_output_tokens=200)
    assert [a.deployment for a in plan.attempts] == ["cheap", "mid", "dear"]
    cheap = plan.attempts[0]
    assert cheap.meets_slo and not plan.predicted_miss and not plan.probe
    assert cheap.cost_usd == pytest.approx(1000 * 0.10e-6 + 200 * 0.40e-6)
    assert cheap.ttft_s is not None and 0.17 < cheap.ttft_s < 0.25  # p95 of 162-198 ms
    assert plan.ttft_target_s == 0.25


def test_a_tighter_request_target_moves_to_a_faster_dearer_one() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    chat = route()
    assert first(router, chat, slo_ttft_override_ms=150) == "mid"
    assert first(router, chat, slo_ttft_override_ms=80) == "dear"
    # A looser header cannot loosen the route's own target.
    observe(stats, "cheap", 400, count=80)
    assert first(router, chat, slo_ttft_override_ms=5000) == "mid"


def test_when_none_meets_the_most_likely_wins_and_the_miss_is_recorded() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    plan = router.plan("chat", route(), PRICES, 1000, slo_ttft_override_ms=48)
    assert plan.predicted_miss
    # dear's answers span 45-55 ms: some meet 48 ms, the others' never do.
    assert plan.attempts[0].deployment == "dear"
    assert not plan.attempts[0].meets_slo
    assert router.route_stats("chat")["since_start"]["predicted_misses"] == 1


def test_a_candidate_never_observed_is_tried_cheapest_first() -> None:
    router, stats, _, _ = make()
    observe(stats, "mid", 100)
    observe(stats, "dear", 50)
    plan = router.plan("chat", route(), PRICES, 1000)
    assert plan.attempts[0].deployment == "cheap"
    assert plan.attempts[0].ttft_s is None and plan.attempts[0].meets_slo


def test_a_candidate_without_a_price_ranks_after_priced_ones() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    prices = {"mid": PRICES["mid"], "dear": PRICES["dear"]}
    plan = router.plan("chat", route(), prices, 1000)
    assert [a.deployment for a in plan.attempts] == ["mid", "dear", "cheap"]
    assert plan.attempts[2].cost_usd is None


def test_total_latency_target_uses_time_per_token() -> None:
    router, stats, _, _ = make()
    three_pools(stats)  # every answer: TTFT + 300 ms for 50 tokens, about 6 ms per token
    chat = route(slo=Slo(total_ms=1000))
    assert first(router, chat, expected_output_tokens=50) == "cheap"
    # 500 tokens at ~6 ms is ~3 s: nobody meets 1 s; the fastest first token is the best bet.
    plan = router.plan("chat", chat, PRICES, 1000, expected_output_tokens=500)
    assert plan.predicted_miss
    assert plan.attempts[0].total_s is not None and plan.attempts[0].total_s > 2.5


def test_requests_in_flight_add_a_queueing_term() -> None:
    router, stats, _, _ = make()
    three_pools(stats)  # observed with nothing else in flight
    chat = route()
    assert first(router, chat) == "cheap"
    for _ in range(3):  # three requests now wait on the cheap pool: (3 + 1) x 198 ms > 250 ms
        stats.started("cheap")
    assert first(router, chat) == "mid"


def test_fastest_ignores_price() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    plan = router.plan("chat", route(strategy="fastest"), PRICES, 1000)
    assert [a.deployment for a in plan.attempts] == ["dear", "mid", "cheap"]


def test_ordered_follows_the_policy() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    chat = route(strategy="ordered", candidates=["mid", "dear", "cheap"])
    plan = router.plan("chat", chat, PRICES, 1000)
    assert [a.deployment for a in plan.attempts] == ["mid", "dear", "cheap"]


def test_weighted_draws_by_weight() -> None:
    router, _, _, _ = make()
    chat = route(strategy="weighted", weights={"cheap": 3, "mid": 1, "dear": 0})
    firsts = Counter(first(router, chat) for _ in range(4000))
    assert firsts["dear"] == 0
    assert 0.72 < firsts["cheap"] / 4000 < 0.78
    plan = router.plan("chat", chat, PRICES, 1000)
    assert len(plan.attempts) == 3 and {a.deployment for a in plan.attempts} == set(PRICES)


def test_open_breakers_are_skipped_unless_nothing_else_is_left() -> None:
    router, stats, breakers, clock = make()
    three_pools(stats)
    for _ in range(5):
        breakers.failure("cheap", now=clock.now)
    plan = router.plan("chat", route(), PRICES, 1000)
    assert [a.deployment for a in plan.attempts] == ["mid", "dear"]
    for name in ("mid", "dear"):
        for _ in range(5):
            breakers.failure(name, now=clock.now)
    plan = router.plan("chat", route(), PRICES, 1000)
    assert [a.deployment for a in plan.attempts] == ["cheap", "mid", "dear"]
    assert not breakers.allow("cheap", now=clock.now)
    clock.now += 5.0  # the cooldown is over: half-open, one probe may go
    plan = router.plan("chat", route(), PRICES, 1000)
    assert plan.attempts[0].deployment == "cheap"


def test_retries_bound_the_attempts() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    assert len(router.plan("chat", route(retries=0), PRICES, 1000).attempts) == 1
    plan = router.plan("chat", route(retries=4), PRICES, 1000)
    assert [a.deployment for a in plan.attempts] == ["cheap", "mid", "dear", "cheap", "mid"]


def test_a_pinned_deployment_is_the_only_attempt() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    plan = router.plan("chat", route(), PRICES, 1000, pinned="dear")
    assert [a.deployment for a in plan.attempts] == ["dear"] and plan.pinned
    with pytest.raises(InvalidRequest) as caught:
        router.plan("chat", route(), PRICES, 1000, pinned="gpt-5")
    assert caught.value.code == "deployment_not_allowed"
    assert caught.value.param == "x-tollgate-deployment"
    assert "cheap, mid, dear" in caught.value.message


def test_exploration_probes_a_cheaper_candidate_that_misses() -> None:
    router, stats, _, _ = make(RouterConfig(explore_every=25, probe_after_s=1e9))
    observe(stats, "cheap", 600)
    observe(stats, "mid", 100)
    observe(stats, "dear", 50)
    chat = route(retries=1)
    plans = [router.plan("chat", chat, PRICES, 1000) for _ in range(100)]
    probes = [plan for plan in plans if plan.probe]
    assert len(probes) == 4  # every 25th decision
    assert all([a.deployment for a in p.attempts] == ["cheap", "mid", "dear"] for p in probes)
    assert all(p.attempts[0].probe for p in probes)  # and the winner still follows it
    natural = [plan for plan in plans if not plan.probe]
    assert all([a.deployment for a in p.attempts] == ["mid", "dear"] for p in natural)
    assert router.route_stats("chat")["since_start"]["probes"] == 4


def test_a_stale_cheaper_candidate_gets_a_probe_by_time() -> None:
    router, stats, _, clock = make(RouterConfig(explore_every=10**9, probe_after_s=20.0))
    observe(stats, "cheap", 600)
    observe(stats, "mid", 100)
    observe(stats, "dear", 50)
    chat = route()
    assert not router.plan("chat", chat, PRICES, 1000).probe
    clock.now += 20.0
    assert router.plan("chat", chat, PRICES, 1000).attempts[0].deployment == "cheap"
    assert not router.plan("chat", chat, PRICES, 1000).probe  # once per 20 s, not every request


def test_plan_met_judges_client_timings() -> None:
    router, stats, _, _ = make()
    three_pools(stats)
    plan = router.plan("chat", route(slo=Slo(ttft_ms=250, total_ms=2000)), PRICES, 1000)
    assert plan.met(0.2, 1.5) is True
    assert plan.met(0.3, 1.5) is False
    assert plan.met(0.2, 2.5) is False
    assert router.plan("chat", route(slo=None), PRICES, 1000).met(9.0, 9.0) is None


def test_cost_uses_the_routes_observed_output_when_max_tokens_is_unset() -> None:
    router, stats, _, _ = make()
    three_pools(stats)  # every answer had 50 output tokens
    plan = router.plan("chat", route(), PRICES, prompt_tokens=1000)
    assert plan.attempts[0].cost_usd == pytest.approx(1000 * 0.10e-6 + 50 * 0.40e-6)


def test_explain_shows_every_candidate_and_changes_nothing() -> None:
    router, stats, breakers, clock = make()
    three_pools(stats)
    for _ in range(5):
        breakers.failure("dear", now=clock.now)
    before = stats.deployment("cheap").scale
    view = router.explain("chat", route(), PRICES, prompt_tokens=2000, expected_output_tokens=100)
    assert stats.deployment("cheap").scale == before  # no decay tick
    assert view["winner"] == "cheap" and view["winner_meets_slo"] is True
    assert view["slo"] == {"ttft_ms": 250.0, "total_ms": None, "percentile": 95.0}
    rows = {row["deployment"]: row for row in view["candidates"]}
    assert set(rows) == {"cheap", "mid", "dear"}
    assert rows["cheap"]["cost_usd"] == pytest.approx(2000 * 0.10e-6 + 100 * 0.40e-6)
    assert rows["cheap"]["price"] == {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.4}
    assert 170 < rows["cheap"]["predicted"]["ttft_ms"] < 250
    assert rows["mid"]["rank"] == 2
    assert rows["dear"]["breaker"]["state"] == "open" and rows["dear"]["rank"] is None
    assert rows["cheap"]["health"]["observations"] > 0
    assert rows["cheap"]["health"]["error_rate"] == 0.0


def test_the_slo_header_is_parsed_strictly() -> None:
    assert parse_ttft_override(None) is None
    assert parse_ttft_override("120") == 120.0
    for bad in ("0", "-5", "fast", "nan", "inf"):
        with pytest.raises(InvalidRequest) as caught:
            parse_ttft_override(bad)
        assert caught.value.param == "x-tollgate-slo-ttft-ms"


def test_a_policy_reload_keeps_the_routes_memory() -> None:
    router, stats, _, _ = make(RouterConfig(explore_every=10, probe_after_s=1e9))
    observe(stats, "cheap", 600)
    observe(stats, "mid", 100)
    probes = [router.plan("chat", route(), PRICES, 1000).probe for _ in range(9)]
    assert not any(probes)
    assert router.plan("chat", route(), PRICES, 1000).probe  # a new Route object: count kept
