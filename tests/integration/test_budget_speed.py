"""What reserve + settle cost per request, measured and printed (``-s``), never asserted.

A realistic plan (two team budgets, rpm, tpm and a per-key budget: five counters), one request
at a time, 5,000 times, each timed with ``time.perf_counter``. The counters must add up at the
end, so the loop cannot silently do nothing.
"""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from gateway.budget import Charge, Limiter, MemoryLimiter, RedisLimiter, build_plan
from gateway.budget.redis_limiter import fail_fast_options
from gateway.policy.schema import Defaults, Team
from gateway.redis_scripts import ScriptClient

ROUNDS = 5000
PLAN = build_plan(
    "speed",
    Team.model_validate(
        {
            "budgets": [{"tokens": 10**12, "window": "day"}, {"usd": 10**6, "window": "month"}],
            "limits": {"rpm": 10**9, "tpm": 10**12},
            "keys_budget": {"tokens": 10**12, "window": "day"},
        }
    ),
    Defaults(),
)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def measure(limiter: Limiter) -> dict[str, float]:
    estimate, actual = Charge(1200, 3_000_000), Charge(800, 2_000_000)
    for i in range(200):  # warm up: scripts loaded, connections open, windows cached
        await limiter.reserve(f"w{i}", PLAN, "k", estimate, timeout_s=60)
        await limiter.settle(PLAN, f"w{i}", actual)
    pairs, reserves, settles, headers = [], [], [], []
    for i in range(ROUNDS):
        started = time.perf_counter()
        admission = await limiter.reserve(f"r{i}", PLAN, "k", estimate, timeout_s=60)
        reserved = time.perf_counter()
        await limiter.settle(PLAN, f"r{i}", actual)
        settled = time.perf_counter()
        admission.headers()
        done = time.perf_counter()
        assert admission.admitted
        pairs.append(settled - started)
        reserves.append(reserved - started)
        settles.append(settled - reserved)
        headers.append(done - settled)
    windows = {w.spec.name: w for w in await limiter.snapshot(PLAN, "k")}
    assert windows["tokens/day"].used == (200 + ROUNDS) * 800
    assert windows["tokens/day"].reserved == 0
    return {
        "reserve+settle p50": percentile(pairs, 0.5),
        "reserve+settle p99": percentile(pairs, 0.99),
        "reserve p50": percentile(reserves, 0.5),
        "settle p50": percentile(settles, 0.5),
        "headers() p50": percentile(headers, 0.5),
    }


def report(name: str, numbers: dict[str, float]) -> None:
    shown = ", ".join(f"{label} {value * 1e6:.0f} us" for label, value in numbers.items())
    print(f"\n{name} ({ROUNDS} rounds): {shown}")


@pytest.mark.parametrize("backend", ["memory", "redis", "redis-lean"])
async def test_reserve_and_settle_cost(backend: str, redis_url: str, redis_prefix: str) -> None:
    if backend == "memory":
        report("in-process limiter", await measure(MemoryLimiter(redis_prefix)))
        return
    client = aioredis.from_url(redis_url, **fail_fast_options())
    scripts = ScriptClient.from_url(redis_url) if backend == "redis-lean" else None
    try:
        numbers = await measure(RedisLimiter(client, redis_prefix, scripts=scripts))
        pings = []
        for _ in range(1000):
            started = time.perf_counter()
            await client.ping()
            pings.append(time.perf_counter() - started)
        numbers["PING p50 (one round trip, for scale)"] = percentile(pings, 0.5)
    finally:
        if scripts is not None:
            await scripts.aclose()
        await client.aclose()
    runner = "the lean script client" if scripts else "redis-py"
    report(f"Redis limiter at {redis_url} on {runner}", numbers)
