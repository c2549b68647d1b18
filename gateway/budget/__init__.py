"""Budgets and rate limits, exact across gateway replicas.

* :mod:`~gateway.budget.plan`: what a team is held to (:class:`BudgetPlan`, from the policy).
* :mod:`~gateway.budget.estimate`: what a request may cost before it runs, and did cost after.
* :mod:`~gateway.budget.limiter`: the contract (reserve, extend, settle, release, count_hit,
  charge, snapshot), implemented by :class:`RedisLimiter` (one Lua call per operation) and
  :class:`MemoryLimiter` (in process, the embedded default).
* :mod:`~gateway.budget.windows`: UTC calendar windows and their key labels.
"""

from __future__ import annotations

from gateway.budget.admission import Admission, Refusal, WindowState
from gateway.budget.estimate import (
    NO_COMPLETION,
    Completion,
    charge_for,
    completion_limit,
    estimate,
)
from gateway.budget.limiter import (
    BudgetUnavailable,
    Fill,
    Limiter,
    Probe,
    Probed,
    Settlement,
)
from gateway.budget.memory_limiter import MemoryLimiter
from gateway.budget.plan import (
    BudgetPlan,
    Charge,
    LimitSpec,
    PlanCache,
    build_plan,
    redis_down_mode,
)
from gateway.budget.redis_limiter import RedisLimiter, fail_fast_options

__all__ = [
    "NO_COMPLETION",
    "Admission",
    "BudgetPlan",
    "BudgetUnavailable",
    "Charge",
    "Completion",
    "Fill",
    "LimitSpec",
    "Limiter",
    "MemoryLimiter",
    "PlanCache",
    "Probe",
    "Probed",
    "RedisLimiter",
    "Refusal",
    "Settlement",
    "WindowState",
    "build_plan",
    "charge_for",
    "completion_limit",
    "estimate",
    "fail_fast_options",
    "redis_down_mode",
]
