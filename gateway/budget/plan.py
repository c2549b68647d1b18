"""What a team is held to: every budget and rate limit that applies to its requests.

A :class:`BudgetPlan` is derived from the policy once per (policy, team) and reused by every
request; it is plain immutable data, so the request path never touches pydantic.

Money is an integer number of nano-dollars (1e-9 USD) everywhere below the policy: exact in
Python, in Lua (doubles hold integers exactly up to 2^53, i.e. about $9M in one window) and in
Redis. Tokens and requests are integers too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from gateway.budget.windows import WindowKind
from gateway.policy.schema import Budget, Defaults, Policy, RedisDownMode, Team

NANO_PER_USD = 1_000_000_000

Unit = Literal["tokens", "usd", "requests"]
Kind = Literal["budget", "rate"]
Scope = Literal["team", "key"]

# One letter per unit, as the Lua scripts see it.
UNIT_CODES: dict[Unit, str] = {"tokens": "t", "usd": "u", "requests": "r"}


def usd_to_nano(usd: float) -> int:
    """Dollars to nano-dollars, rounded to the nearest one (for limits)."""
    return round(usd * NANO_PER_USD)


def nano_to_usd(nano: int) -> float:
    return nano / NANO_PER_USD


def cost_nano(tokens: float, usd_per_token: float) -> int:
    """What ``tokens`` cost at ``usd_per_token``, in nano-dollars, rounded up.

    Rounding up (after forgiving float noise such as 2500.0000000001) makes a reservation never
    smaller than the charge for the same tokens, and the charge monotonic in the tokens.
    """
    exact = tokens * usd_per_token * NANO_PER_USD
    return max(0, math.ceil(exact - 1e-6))


@dataclass(frozen=True, slots=True)
class Charge:
    """An amount of usage: tokens and nano-dollars (an estimate, or what a request really used)."""

    tokens: int = 0
    nano_usd: int = 0

    @property
    def usd(self) -> float:
        return self.nano_usd / NANO_PER_USD

    @classmethod
    def of(cls, tokens: int, usd: float) -> Charge:
        """A charge from a dollar amount (rounded up to the nano-dollar)."""
        return cls(tokens, cost_nano(1, usd))


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One limit: ``limit`` units of ``unit`` per ``window``, for the team or for each of its keys.

    ``kind`` decides the refusal: a ``budget`` is ``insufficient_quota``, a ``rate`` limit (rpm,
    tpm) is ``rate_limit_exceeded``.
    """

    kind: Kind
    scope: Scope
    unit: Unit
    window: WindowKind
    limit: int  # tokens, requests, or nano-dollars

    @property
    def name(self) -> str:
        """A short stable name: ``tokens/day``, ``usd/month``, ``key tokens/day``, ``rpm``..."""
        if self.kind == "rate":
            return "rpm" if self.unit == "requests" else "tpm"
        base = f"{self.unit}/{self.window}"
        return f"key {base}" if self.scope == "key" else base

    @property
    def stem(self) -> str:
        """The part of the counter key naming this limit (the window label follows it)."""
        if self.kind == "rate":
            return f"{self.name}:"
        return f"{self.unit}:{self.window}:"

    def display_limit(self) -> float | int:
        """The limit in the policy's units (dollars for usd)."""
        return nano_to_usd(self.limit) if self.unit == "usd" else self.limit


@dataclass(frozen=True, slots=True, eq=False)
class BudgetPlan:
    """Every limit a team's requests are held to (compared by identity: one per policy+team)."""

    team: str
    team_limits: tuple[LimitSpec, ...]
    key_limits: tuple[LimitSpec, ...]
    on_redis_down: RedisDownMode

    @property
    def unlimited(self) -> bool:
        """True when nothing needs counting: the limiter can be skipped entirely."""
        return not self.team_limits and not self.key_limits


def redis_down_mode(team: Team | None, defaults: Defaults) -> RedisDownMode:
    """What to do for ``team`` when the budget store cannot be reached."""
    if team is not None and team.on_redis_down is not None:
        return team.on_redis_down
    return defaults.on_redis_down


def build_plan(team_name: str, team: Team | None, defaults: Defaults) -> BudgetPlan:
    """The plan for ``team`` (pure). Two budgets of the same unit and window share one counter,
    so only the tighter one is kept: counting the same tokens twice would halve the budget."""
    team_limits: dict[tuple[str, str], LimitSpec] = {}
    key_limits: tuple[LimitSpec, ...] = ()
    if team is not None:
        for budget in team.budgets:
            spec = _budget_spec(budget, "team")
            _keep_tighter(team_limits, spec)
        limits = team.limits
        if limits is not None and limits.rpm is not None:
            _keep_tighter(team_limits, LimitSpec("rate", "team", "requests", "minute", limits.rpm))
        if limits is not None and limits.tpm is not None:
            _keep_tighter(team_limits, LimitSpec("rate", "team", "tokens", "minute", limits.tpm))
        if team.keys_budget is not None:
            key_limits = (_budget_spec(team.keys_budget, "key"),)
    return BudgetPlan(
        team=team_name,
        team_limits=tuple(team_limits.values()),
        key_limits=key_limits,
        on_redis_down=redis_down_mode(team, defaults),
    )


def _budget_spec(budget: Budget, scope: Scope) -> LimitSpec:
    if budget.tokens is not None:
        return LimitSpec("budget", scope, "tokens", budget.window, budget.tokens)
    assert budget.usd is not None  # the schema guarantees exactly one of the two
    return LimitSpec("budget", scope, "usd", budget.window, usd_to_nano(budget.usd))


def _keep_tighter(found: dict[tuple[str, str], LimitSpec], spec: LimitSpec) -> None:
    slot = (spec.kind, spec.stem)
    current = found.get(slot)
    if current is None or spec.limit < current.limit:
        found[slot] = spec


class PlanCache:
    """Plans for the current policy, built on first use and dropped when the policy changes.

    Keyed by the policy object's identity: a reload builds a new :class:`Policy`, so the first
    request under it starts a fresh cache and in-flight requests keep the plan they took.
    """

    __slots__ = ("_plans", "_policy")

    def __init__(self) -> None:
        self._policy: Policy | None = None
        self._plans: dict[str, BudgetPlan] = {}

    def get(self, policy: Policy, team: str) -> BudgetPlan:
        """The plan for ``team`` under ``policy`` (a team absent from it has no limits)."""
        if policy is not self._policy:
            self._policy = policy
            self._plans = {}
        plan = self._plans.get(team)
        if plan is None:
            plan = build_plan(team, policy.team(team), policy.document.defaults)
            self._plans[team] = plan
        return plan
