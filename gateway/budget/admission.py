"""The answer to "may this request go ahead?", the numbers behind it, and a snapshot's rows.

OpenAI's rate-limit headers, as Tollgate fills them in:

``x-ratelimit-limit-requests`` / ``-remaining-requests`` / ``-reset-requests``
    The team's ``limits.rpm``: requests allowed in the current UTC minute, how many are left after
    this one, and the time until the minute ends (``12s``). Absent when the team has no rpm.
``x-ratelimit-limit-tokens`` / ``-remaining-tokens`` / ``-reset-tokens``
    The tightest token limit that applies (``limits.tpm``, a team token budget or the key's token
    budget, whichever has the fewest tokens left once this request's estimate is reserved): its
    limit, the tokens left (limit - used - reserved, never below 0) and the time until its window
    ends (``6m0s``, ``3h12m5s``). Absent when no token limit applies.

Dollar budgets have no OpenAI header; a refusal by one names it in the error message.
``Retry-After`` (whole seconds, at least 1) goes on refusals only: the time until the latest-ending
window among those that refused, since nothing can succeed before that one resets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.budget.plan import BudgetPlan, Charge, LimitSpec, nano_to_usd
from gateway.budget.windows import format_reset
from gateway.errors import GatewayError, QuotaExceeded, RateLimited


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: the limit, its numbers, and how long until it resets."""

    team: str
    spec: LimitSpec
    used: int
    reserved: int
    needed: int
    retry_after_s: int

    @property
    def error_type(self) -> str:
        """``insufficient_quota`` for a budget, ``rate_limit_exceeded`` for rpm/tpm."""
        return "insufficient_quota" if self.spec.kind == "budget" else "rate_limit_exceeded"

    def message(self) -> str:
        spec = self.spec
        wait = format_reset(self.retry_after_s)
        if spec.kind == "rate":
            what = "requests per minute" if spec.unit == "requests" else "tokens per minute"
            numbers = f"limit {spec.limit}, used {self.used}"
            if spec.unit == "tokens":
                numbers += f", reserved {self.reserved}; this request needs up to {self.needed}"
            return (
                f"Rate limit reached for team '{self.team}' on {what}: {numbers}. "
                f"Please try again in {wait}."
            )
        owner = "This API key" if spec.scope == "key" else f"Team '{self.team}'"
        return (
            f"You exceeded your current quota: {owner} has used its budget of "
            f"{_amount(spec, spec.limit)} per {spec.window} "
            f"(used {_amount(spec, self.used)}, reserved {_amount(spec, self.reserved)}; "
            f"this request needs up to {_amount(spec, self.needed)}). "
            f"It resets in {wait}."
        )


def _amount(spec: LimitSpec, value: int) -> str:
    if spec.unit == "usd":
        return f"${nano_to_usd(value):,.6f}".rstrip("0").rstrip(".")
    return f"{value:,} {spec.unit}"


class Admission:
    """What ``reserve`` or ``count_hit`` decided, with the counters as the call left them.

    ``admitted`` is all the hot path needs; :meth:`headers`, :attr:`refusal` and :meth:`error`
    are computed on demand from the raw numbers.
    """

    __slots__ = ("_ends", "_needed", "_now", "_specs", "_team", "_values", "admitted", "replayed")

    def __init__(
        self,
        team: str,
        specs: Sequence[LimitSpec],
        ends: Sequence[int],
        values: Sequence[int | bytes],
        now: float,
        needed: Charge,
    ) -> None:
        status = int(values[0])
        self.admitted = status != 0
        # The request id already held a reservation (a reserve replayed after a lost reply).
        self.replayed = status == 2
        self._team = team
        self._specs = specs
        self._ends = ends
        self._values = values
        self._now = now
        self._needed = needed

    @classmethod
    def unlimited(cls, plan: BudgetPlan) -> Admission:
        """Admitted without counting anything: the plan has no limits."""
        return cls(plan.team, (), (), (1,), 0.0, Charge())

    def _counter(self, index: int) -> tuple[int, int, bool]:
        values = self._values
        base = 3 * index + 1
        return int(values[base]), int(values[base + 1]), bool(int(values[base + 2]))

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers (see the module docstring for their meaning)."""
        out: dict[str, str] = {}
        tightest: tuple[int, LimitSpec, int] | None = None
        for index, spec in enumerate(self._specs):
            used, reserved, _ = self._counter(index)
            if spec.unit == "requests":
                out["x-ratelimit-limit-requests"] = str(spec.limit)
                out["x-ratelimit-remaining-requests"] = str(max(0, spec.limit - used))
                out["x-ratelimit-reset-requests"] = format_reset(self._ends[index] - self._now)
            elif spec.unit == "tokens":
                left = spec.limit - used - reserved
                if tightest is None or left < tightest[0]:
                    tightest = (left, spec, self._ends[index])
        if tightest is not None:
            left, spec, end = tightest
            out["x-ratelimit-limit-tokens"] = str(spec.limit)
            out["x-ratelimit-remaining-tokens"] = str(max(0, left))
            out["x-ratelimit-reset-tokens"] = format_reset(end - self._now)
        return out

    @property
    def refusal(self) -> Refusal | None:
        """The limit that refused the request (a budget before a rate limit), or None."""
        if self.admitted:
            return None
        refused = [i for i in range(len(self._specs)) if self._counter(i)[2]]
        if not refused:
            return None
        ends = self._ends
        index = max(refused, key=lambda i: (self._specs[i].kind == "budget", ends[i]))
        latest = max(ends[i] for i in refused) - self._now
        spec = self._specs[index]
        used, reserved, _ = self._counter(index)
        needed = (
            1
            if spec.unit == "requests"
            else self._needed.tokens
            if spec.unit == "tokens"
            else self._needed.nano_usd
        )
        return Refusal(self._team, spec, used, reserved, needed, max(1, math.ceil(latest)))

    def error(self) -> GatewayError:
        """The 429 to send (``QuotaExceeded`` or ``RateLimited``), with every header set."""
        refusal = self.refusal
        if refusal is None:
            raise ValueError("the request was admitted; there is no error to send")
        headers = self.headers()
        headers["retry-after"] = str(refusal.retry_after_s)
        kind = QuotaExceeded if refusal.error_type == "insufficient_quota" else RateLimited
        return kind(refusal.message(), headers=headers)


@dataclass(frozen=True, slots=True)
class WindowState:
    """One limit in its current window, as a snapshot shows it."""

    spec: LimitSpec
    key_id: str | None
    window_start: int
    window_end: int
    used: int
    reserved: int

    @property
    def remaining(self) -> int:
        return max(0, self.spec.limit - self.used - self.reserved)

    def as_dict(self) -> dict[str, Any]:
        """A row for JSON, tables and CSV: dollars as dollars, times in ISO 8601 UTC."""
        spec = self.spec

        def show(value: int) -> float | int:
            return nano_to_usd(value) if spec.unit == "usd" else value

        return {
            "limit": spec.name,
            "scope": spec.scope if self.key_id is None else f"key {self.key_id}",
            "unit": spec.unit,
            "window": spec.window,
            "window_start": _iso(self.window_start),
            "resets_at": _iso(self.window_end),
            "limit_value": show(spec.limit),
            "used": show(self.used),
            "reserved": show(self.reserved),
            "remaining": show(self.remaining),
        }


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
