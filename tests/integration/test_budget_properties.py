"""Property tests: any interleaving of operations keeps the budget arithmetic right.

Hypothesis generates sequences of reserve / settle / release / extend / cache hit / time passing
(which expires reservations and rolls minute windows over). A plain reference model predicts
every answer and every counter; after each step the limiter must agree with it, no counter may
be negative, and an admitted request must leave used + reserved within every limit it added to.

Run against the in-process limiter with many examples and against Redis with fewer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.budget import (
    BudgetPlan,
    Charge,
    Limiter,
    LimitSpec,
    MemoryLimiter,
    RedisLimiter,
    Settlement,
    build_plan,
)
from gateway.budget.windows import span_of
from gateway.policy.schema import Defaults, Team

START = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC).timestamp()
MARGIN = 30.0  # the limiter's default hold margin
NANO_PER_TOKEN = 1000
KEYS = ("ka", "kb", "kc")
PLAN = build_plan(
    "props",
    Team.model_validate(
        {
            "budgets": [{"tokens": 400, "window": "day"}, {"usd": 0.0003, "window": "hour"}],
            "limits": {"rpm": 9, "tpm": 250},
            "keys_budget": {"tokens": 160, "window": "hour"},
        }
    ),
    Defaults(),
)

slots = st.integers(0, 7)
keys = st.sampled_from(KEYS)
operations = st.one_of(
    st.tuples(st.just("reserve"), slots, st.integers(1, 90), keys, st.sampled_from([5, 20, 60])),
    st.tuples(st.just("settle"), slots, st.integers(0, 150)),
    st.tuples(st.just("release"), slots),
    st.tuples(st.just("extend"), slots, st.integers(1, 120)),
    st.tuples(st.just("hit"), st.integers(0, 40), keys),
    st.tuples(st.just("advance"), st.floats(0, 60, allow_nan=False)),
)
scenarios = st.tuples(st.floats(0, 59.99), st.lists(operations, min_size=10, max_size=60))

CounterId = tuple[str, str, str | None]  # (limit name, window label, key id)


@dataclass
class Held:
    tokens: int
    nano: int
    expires: float
    counters: list[tuple[LimitSpec, CounterId]]
    active: bool = True


@dataclass
class Model:
    """What the limiter should do, written as plainly as possible."""

    plan: BudgetPlan
    now: float
    used: dict[CounterId, int] = field(default_factory=dict)
    reserved: dict[CounterId, int] = field(default_factory=dict)
    held: dict[str, Held] = field(default_factory=dict)

    def counters(self, key: str | None) -> Iterator[tuple[LimitSpec, CounterId]]:
        specs = self.plan.team_limits + (self.plan.key_limits if key else ())
        for spec in specs:
            label = span_of(spec.window, self.now).label
            yield spec, (spec.name, label, key if spec.scope == "key" else None)

    @staticmethod
    def amount(spec: LimitSpec, tokens: int, nano: int) -> int:
        return 1 if spec.unit == "requests" else tokens if spec.unit == "tokens" else nano

    def sweep(self) -> None:
        for held in self.held.values():
            if held.active and held.expires <= self.now:
                held.active = False
                for spec, counter in held.counters:
                    self.reserved[counter] -= self.amount(spec, held.tokens, held.nano)

    def fits(self, key: str, tokens: int, nano: int) -> bool:
        return all(
            self.amount(spec, tokens, nano) == 0
            or self.used.get(c, 0) + self.reserved.get(c, 0) + self.amount(spec, tokens, nano)
            <= spec.limit
            for spec, c in self.counters(key)
        )

    def reserve(self, rid: str, tokens: int, key: str, timeout: float) -> tuple[bool, bool]:
        self.sweep()
        if rid in self.held:
            return True, True
        nano = tokens * NANO_PER_TOKEN
        if not self.fits(key, tokens, nano):
            return False, False
        counters = []
        for spec, c in self.counters(key):
            if spec.unit == "requests":
                self.used[c] = self.used.get(c, 0) + 1
            else:
                self.reserved[c] = self.reserved.get(c, 0) + self.amount(spec, tokens, nano)
                counters.append((spec, c))
        self.held[rid] = Held(tokens, nano, self.now + timeout + MARGIN, counters)
        return True, False

    def finish(self, rid: str, tokens: int | None) -> Settlement:
        held = self.held.pop(rid, None)
        if held is None:
            return Settlement.NONE
        for spec, c in held.counters:
            if held.active:
                self.reserved[c] -= self.amount(spec, held.tokens, held.nano)
            if tokens is not None:
                self.used[c] = self.used.get(c, 0) + self.amount(
                    spec, tokens, tokens * NANO_PER_TOKEN
                )
        return Settlement.DONE if held.active else Settlement.LATE

    def extend(self, rid: str, tokens: int) -> bool:
        self.sweep()
        held = self.held.get(rid)
        if held is None or not held.active:
            return False
        nano = tokens * NANO_PER_TOKEN
        changes = [
            (c, self.amount(spec, tokens, nano) - self.amount(spec, held.tokens, held.nano), spec)
            for spec, c in held.counters
        ]
        for c, grow, spec in changes:
            if grow > 0 and self.used.get(c, 0) + self.reserved.get(c, 0) + grow > spec.limit:
                return False
        for c, change, _ in changes:
            self.reserved[c] += change
        held.tokens, held.nano = tokens, nano
        return True

    def hit(self, tokens: int, key: str) -> bool:
        nano = tokens * NANO_PER_TOKEN
        if not self.fits(key, tokens, nano):
            return False
        for spec, c in self.counters(key):
            self.used[c] = self.used.get(c, 0) + self.amount(spec, tokens, nano)
        return True

    def view(self, key: str | None) -> dict[str, tuple[int, int]]:
        return {
            spec.name: (self.used.get(c, 0), self.reserved.get(c, 0))
            for spec, c in self.counters(key)
        }


async def observed(limiter: Limiter, key: str | None, now: float) -> dict[str, tuple[int, int]]:
    windows = await limiter.snapshot(PLAN, key, now=now)
    for window in windows:
        assert window.used >= 0 and window.reserved >= 0, window
    return {w.spec.name: (w.used, w.reserved) for w in windows}


async def play(limiter: Limiter, offset: float, steps: list[tuple[Any, ...]]) -> None:
    model = Model(PLAN, START + offset)
    for step in steps:
        kind, now = step[0], model.now
        if kind == "reserve":
            _, slot, tokens, key, timeout = step
            admission = await limiter.reserve(
                f"r{slot}", PLAN, key, Charge(tokens, tokens * NANO_PER_TOKEN),
                timeout_s=timeout, now=now,
            )  # fmt: skip
            expected = model.reserve(f"r{slot}", tokens, key, timeout)
            assert (admission.admitted, admission.replayed) == expected, step
            if admission.admitted and not admission.replayed:
                for window in await limiter.snapshot(PLAN, key, now=now):
                    assert window.used + window.reserved <= window.spec.limit, (step, window)
        elif kind == "settle":
            _, slot, tokens = step
            actual = Charge(tokens, tokens * NANO_PER_TOKEN)
            found = await limiter.settle(PLAN, f"r{slot}", actual)
            assert found is model.finish(f"r{slot}", tokens), step
        elif kind == "release":
            found = await limiter.release(PLAN, f"r{step[1]}")
            assert found is model.finish(f"r{step[1]}", None), step
        elif kind == "extend":
            _, slot, tokens = step
            grown = await limiter.extend(
                PLAN, f"r{slot}", Charge(tokens, tokens * NANO_PER_TOKEN), now=now
            )
            assert grown is model.extend(f"r{slot}", tokens), step
        elif kind == "hit":
            _, tokens, key = step
            admission = await limiter.count_hit(
                PLAN, key, Charge(tokens, tokens * NANO_PER_TOKEN), now=now
            )
            assert admission.admitted is model.hit(tokens, key), step
        else:
            model.now += step[1]
        model.sweep()
        for key in (None, *KEYS):
            assert await observed(limiter, key, model.now) == model.view(key), (step, key)


def test_any_interleaving_keeps_the_in_process_limiter_exact() -> None:
    with asyncio.Runner() as runner:

        @settings(max_examples=300, deadline=None)
        @given(scenarios)
        def check(scenario: tuple[float, list[tuple[Any, ...]]]) -> None:
            runner.run(play(MemoryLimiter(), *scenario))

        check()


def test_any_interleaving_keeps_the_redis_limiter_exact(redis_url: str, redis_prefix: str) -> None:
    examples = itertools.count()
    with asyncio.Runner() as runner:
        client = aioredis.from_url(redis_url)

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(scenarios)
        def check(scenario: tuple[float, list[tuple[Any, ...]]]) -> None:
            # A prefix per example: each starts from empty counters (all under redis_prefix,
            # which the fixture deletes).
            limiter = RedisLimiter(client, f"{redis_prefix}{next(examples)}:")
            runner.run(play(limiter, *scenario))

        try:
            check()
        finally:
            runner.run(client.aclose())
