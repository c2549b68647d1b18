"""Probing reserves on the real Redis: a cache lookup and a reservation in one Lua call, and a
settle that fills the probed key in the same step.

Time is injected (``now=``); every key lives under this test's own prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from gateway.budget import (
    BudgetPlan,
    Charge,
    Fill,
    MemoryLimiter,
    Probe,
    RedisLimiter,
    Settlement,
    build_plan,
)
from gateway.policy.schema import Defaults, Team
from gateway.redis_scripts import ScriptClient

NOON = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC).timestamp()


def plan_of(tokens: int, rpm: int = 100) -> BudgetPlan:
    spec = {"budgets": [{"window": "day", "tokens": tokens}], "limits": {"rpm": rpm}}
    return build_plan("search", Team.model_validate(spec), Defaults())


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    found = aioredis.from_url(redis_url)
    try:
        yield found
    finally:
        await found.aclose()


@pytest.fixture(params=["redis", "redis-lean"])
async def limiter(
    request: pytest.FixtureRequest, client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> AsyncIterator[RedisLimiter]:
    """The scripts run through redis-py, or through the lean script client."""
    scripts = ScriptClient.from_url(redis_url) if request.param == "redis-lean" else None
    try:
        yield RedisLimiter(client, redis_prefix, scripts=scripts)
    finally:
        if scripts is not None:
            await scripts.aclose()


def probe_of(limiter: RedisLimiter, token: str = "tok", count_hit: bool = True) -> Probe:
    base = limiter.team_base("search")
    return Probe(f"{base}:cache:abc", f"{base}:cache:abc:lock", token, 5_000, count_hit)


async def used_reserved(limiter: RedisLimiter, plan: BudgetPlan) -> dict[str, tuple[int, int]]:
    return {w.spec.name: (w.used, w.reserved) for w in await limiter.snapshot(plan, now=NOON)}


async def test_a_miss_takes_the_lock_and_reserves_in_one_call(
    limiter: RedisLimiter, client: aioredis.Redis
) -> None:
    plan, probe = plan_of(1000), probe_of(limiter)
    found = await limiter.reserve_probing(
        "r1", plan, None, Charge(100, 0), probe, timeout_s=30, now=NOON
    )
    assert found.value is None and found.locked
    assert found.admission is not None and found.admission.admitted
    assert await client.get(probe.lock) == b"tok"
    assert await used_reserved(limiter, plan) == {"tokens/day": (0, 100), "rpm": (1, 0)}


async def test_a_hit_returns_the_value_reserves_nothing_and_counts_rpm(
    limiter: RedisLimiter, client: aioredis.Redis
) -> None:
    plan, probe = plan_of(1000), probe_of(limiter)
    await client.set(probe.key, b"entry")
    found = await limiter.reserve_probing(
        "r1", plan, None, Charge(100, 0), probe, timeout_s=30, now=NOON
    )
    assert found.value == b"entry" and not found.locked
    assert found.admission is not None and found.admission.admitted
    assert await client.get(probe.lock) is None
    assert await used_reserved(limiter, plan) == {"tokens/day": (0, 0), "rpm": (1, 0)}
    # Uncounted hits leave the counters alone: the caller charges them (count_hits).
    found = await limiter.reserve_probing(
        "r2", plan, None, Charge(100, 0), probe_of(limiter, count_hit=False), timeout_s=30, now=NOON
    )
    assert found.value == b"entry" and found.admission is None
    assert await used_reserved(limiter, plan) == {"tokens/day": (0, 0), "rpm": (1, 0)}


async def test_a_hit_over_rpm_is_refused(limiter: RedisLimiter, client: aioredis.Redis) -> None:
    plan, probe = plan_of(1000, rpm=1), probe_of(limiter)
    await client.set(probe.key, b"entry")
    first = await limiter.reserve_probing(
        "a", plan, None, Charge(1, 0), probe, timeout_s=30, now=NOON
    )
    second = await limiter.reserve_probing(
        "b", plan, None, Charge(1, 0), probe, timeout_s=30, now=NOON
    )
    assert first.admission is not None and first.admission.admitted
    assert second.value == b"entry"
    assert second.admission is not None and not second.admission.admitted


async def test_a_busy_lock_changes_nothing(limiter: RedisLimiter, client: aioredis.Redis) -> None:
    plan = plan_of(1000)
    mine, theirs = probe_of(limiter, "mine"), probe_of(limiter, "theirs")
    await limiter.reserve_probing("a", plan, None, Charge(100, 0), theirs, timeout_s=30, now=NOON)
    found = await limiter.reserve_probing(
        "b", plan, None, Charge(100, 0), mine, timeout_s=30, now=NOON
    )
    assert found.value is None and not found.locked and found.admission is None
    assert await client.get(mine.lock) == b"theirs"
    assert await used_reserved(limiter, plan) == {"tokens/day": (0, 100), "rpm": (1, 0)}


async def test_a_refused_reserve_gives_the_lock_back(
    limiter: RedisLimiter, client: aioredis.Redis
) -> None:
    plan, probe = plan_of(50), probe_of(limiter)
    found = await limiter.reserve_probing(
        "r1", plan, None, Charge(100, 0), probe, timeout_s=30, now=NOON
    )
    assert found.value is None and not found.locked
    assert found.admission is not None and not found.admission.admitted
    assert await client.get(probe.lock) is None
    assert await used_reserved(limiter, plan) == {"tokens/day": (0, 0), "rpm": (0, 0)}


async def test_settle_fills_the_key_and_drops_only_its_own_lock(
    limiter: RedisLimiter, client: aioredis.Redis
) -> None:
    plan, probe = plan_of(1000), probe_of(limiter)
    await limiter.reserve_probing("r1", plan, None, Charge(100, 0), probe, timeout_s=30, now=NOON)
    fill = Fill(probe.key, probe.lock, "tok", b"answer", 60_000)
    assert await limiter.settle(plan, "r1", Charge(40, 0), fill) is Settlement.DONE
    assert await client.get(probe.key) == b"answer"
    assert 0 < await client.pttl(probe.key) <= 60_000
    assert await client.get(probe.lock) is None
    assert await used_reserved(limiter, plan) == {"tokens/day": (40, 0), "rpm": (1, 0)}
    # A lock someone else took over meanwhile is theirs to drop; nothing to keep, nothing written.
    await client.set(probe.lock, b"other")
    await client.delete(probe.key)
    fill = Fill(probe.key, probe.lock, "tok", None, 60_000)
    assert await limiter.settle(plan, "r1", Charge(40, 0), fill) is Settlement.NONE
    assert await client.get(probe.lock) == b"other"
    assert await client.get(probe.key) is None


async def test_only_redis_probes(redis_prefix: str) -> None:
    memory = MemoryLimiter(redis_prefix)
    assert not memory.probes
    probe = Probe("k", "l", "t", 1, True)
    with pytest.raises(NotImplementedError):
        await memory.reserve_probing("r", plan_of(10), None, Charge(1, 0), probe, timeout_s=1)
