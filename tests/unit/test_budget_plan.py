"""Budget plans from the policy, the nano-dollar arithmetic, and the request estimate."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.budget import (
    NO_COMPLETION,
    Charge,
    Completion,
    LimitSpec,
    PlanCache,
    build_plan,
    charge_for,
    completion_limit,
    estimate,
    redis_down_mode,
)
from gateway.budget.plan import cost_nano, usd_to_nano
from gateway.errors import InvalidRequest
from gateway.policy.schema import Defaults, Policy, PolicyDocument, Team


def team(**spec: Any) -> Team:
    return Team.model_validate(spec)


def test_a_plan_lists_every_limit_of_the_team() -> None:
    plan = build_plan(
        "search",
        team(
            budgets=[{"tokens": 2_000_000, "window": "day"}, {"usd": 500, "window": "month"}],
            limits={"rpm": 600, "tpm": 200_000},
            keys_budget={"tokens": 100_000, "window": "day"},
        ),
        Defaults(),
    )
    assert plan.team_limits == (
        LimitSpec("budget", "team", "tokens", "day", 2_000_000),
        LimitSpec("budget", "team", "usd", "month", 500_000_000_000),
        LimitSpec("rate", "team", "requests", "minute", 600),
        LimitSpec("rate", "team", "tokens", "minute", 200_000),
    )
    assert plan.key_limits == (LimitSpec("budget", "key", "tokens", "day", 100_000),)
    assert [spec.name for spec in plan.team_limits] == ["tokens/day", "usd/month", "rpm", "tpm"]
    assert plan.key_limits[0].name == "key tokens/day"
    assert plan.on_redis_down == "fail_closed" and not plan.unlimited


def test_two_budgets_on_one_counter_keep_the_tighter() -> None:
    plan = build_plan(
        "t",
        team(budgets=[{"tokens": 500, "window": "day"}, {"tokens": 300, "window": "day"}]),
        Defaults(),
    )
    assert plan.team_limits == (LimitSpec("budget", "team", "tokens", "day", 300),)


def test_a_team_missing_from_the_policy_has_no_limits() -> None:
    plan = build_plan("ghost", None, Defaults(on_redis_down="fail_open"))
    assert plan.unlimited and plan.on_redis_down == "fail_open"


def test_on_redis_down_comes_from_the_team_else_the_defaults() -> None:
    assert redis_down_mode(team(on_redis_down="fail_open"), Defaults()) == "fail_open"
    assert redis_down_mode(team(), Defaults()) == "fail_closed"
    assert redis_down_mode(team(), Defaults(on_redis_down="fail_open")) == "fail_open"
    assert redis_down_mode(None, Defaults()) == "fail_closed"


def test_the_plan_cache_follows_the_policy_object() -> None:
    def policy() -> Policy:
        document = PolicyDocument.model_validate(
            {"teams": {"search": {"budgets": [{"tokens": 5, "window": "day"}]}}}
        )
        return Policy(document, sources=())

    cache = PlanCache()
    first = policy()
    plan = cache.get(first, "search")
    assert cache.get(first, "search") is plan
    reloaded = cache.get(policy(), "search")
    assert reloaded is not plan and reloaded.team_limits == plan.team_limits
    assert cache.get(first, "nobody").unlimited


def test_money_is_exact_nano_dollars() -> None:
    assert usd_to_nano(500) == 500_000_000_000
    assert usd_to_nano(0.1) == 100_000_000
    # $2.50 per million tokens is 2500 nano-dollars per 1000 tokens, whatever the float noise.
    assert cost_nano(1000, 2.5e-6) == 2_500_000
    assert cost_nano(1, 2.5e-6) == 2_500
    assert cost_nano(3, 1e-10) == 1  # a fraction of a nano-dollar rounds up
    assert cost_nano(0, 5.0) == 0
    assert Charge.of(7, 0.0001) == Charge(7, 100_000)
    assert Charge(0, 1_500_000_000).usd == 1.5


def test_the_completion_limit_falls_back_request_team_defaults() -> None:
    defaults = Defaults(max_tokens=4096)
    assert completion_limit({"max_completion_tokens": 50, "max_tokens": 70}, None, defaults) == (
        Completion(50)
    )
    assert completion_limit({"max_tokens": 70}, None, defaults) == Completion(70)
    assert completion_limit({}, team(max_tokens=1024), defaults) == Completion(1024)
    assert completion_limit({}, team(), defaults) == Completion(4096)
    assert completion_limit({}, None, defaults) == Completion(4096)


def test_choices_multiply_the_limit() -> None:
    completion = completion_limit({"max_tokens": 20, "n": 3}, None, Defaults())
    assert completion == Completion(20, 3) and completion.max_tokens == 60
    assert completion_limit({"max_tokens": 20, "best_of": 5, "n": 2}, None, Defaults()).choices == 5


def test_a_request_over_the_cap_is_clamped_and_the_body_rewritten() -> None:
    capped = team(max_tokens=1024)
    body: dict[str, Any] = {"max_tokens": 5000}
    completion = completion_limit(body, capped, Defaults())
    assert completion == Completion(1024, 1, (("max_tokens", 1024),))
    completion.apply(body)
    assert body == {"max_tokens": 1024}
    both: dict[str, Any] = {"max_completion_tokens": 2048, "max_tokens": 3000}
    completion = completion_limit(both, capped, Defaults())
    completion.apply(both)
    assert both == {"max_completion_tokens": 1024, "max_tokens": 1024}
    assert completion_limit({"max_tokens": 1024}, capped, Defaults()).rewrites == ()


def test_a_request_over_the_cap_is_refused_when_the_team_says_reject() -> None:
    with pytest.raises(InvalidRequest) as caught:
        completion_limit(
            {"max_completion_tokens": 2000}, team(max_tokens=1000, on_cap="reject"), Defaults()
        )
    assert caught.value.status == 400
    assert caught.value.param == "max_completion_tokens"
    assert "above this team's limit of 1000" in caught.value.message


def test_malformed_limits_are_ignored_rather_than_trusted() -> None:
    body = {"max_tokens": True, "max_completion_tokens": -5, "n": "3"}
    assert completion_limit(body, None, Defaults(max_tokens=10)) == Completion(10)


def test_the_estimate_prices_the_prompt_and_every_completion_at_its_limit() -> None:
    # gpt-4o-like prices: $2.50 in, $10 out per million tokens.
    found = estimate(1000, Completion(200, 2), 2.5e-6, 10e-6)
    assert found == Charge(1400, 2_500_000 + 4_000_000)
    assert estimate(42, NO_COMPLETION, 1e-7, 0.0) == Charge(42, 4200)
    actual = charge_for(1000, 150, 2.5e-6, 10e-6)
    assert actual == Charge(1150, 2_500_000 + 1_500_000)
    assert actual.nano_usd <= found.nano_usd
