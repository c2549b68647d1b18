"""Many gateways, one Redis: 300 concurrent requests from 3 processes never overspend.

Each process has its own event loop, Redis client and limiter (as three gateway replicas would);
they start together on a barrier and fire all their requests at once. Each test runs with the
scripts on redis-py (a pool of connections) and on the lean script client (one pipelined
connection per process, as the gateway runs them). The numbers measured are
printed (run with ``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.budget import Charge, RedisLimiter, build_plan
from gateway.policy.schema import Defaults, Team
from gateway.redis_scripts import ScriptClient

PROCESSES = 3
PER_PROCESS = 100
MINUTE_END = datetime(2026, 11, 26, 12, 1, 0, tzinfo=UTC).timestamp()
RUNNERS = pytest.mark.parametrize("runner", ["redis", "redis-lean"])


@dataclass(frozen=True)
class Job:
    request_id: str
    now: float
    estimate: Charge
    actual: Charge


@dataclass(frozen=True)
class Outcome:
    request_id: str
    admitted: bool
    error_type: str | None
    settled: Charge


def _worker(
    url: str,
    prefix: str,
    team_spec: dict[str, Any],
    jobs: list[Job],
    barrier: Any,
    results: Any,
    runner: str,
) -> None:
    """One gateway process: fire every job concurrently, report what happened."""
    results.put(asyncio.run(_serve(url, prefix, team_spec, jobs, barrier, runner)))


async def _serve(
    url: str, prefix: str, team_spec: dict[str, Any], jobs: list[Job], barrier: Any, runner: str
) -> list[Outcome]:
    client = aioredis.from_url(url, max_connections=PER_PROCESS + 10)
    scripts = ScriptClient.from_url(url) if runner == "redis-lean" else None
    limiter = RedisLimiter(client, prefix, scripts=scripts)
    plan = build_plan("search", Team.model_validate(team_spec), Defaults())
    # Load the scripts and open connections before the start line, so the race is the real one.
    await asyncio.gather(*(client.ping() for _ in range(PER_PROCESS)))
    await limiter.snapshot(plan, now=jobs[0].now)
    barrier.wait()

    async def one(job: Job) -> Outcome:
        admission = await limiter.reserve(
            job.request_id, plan, "key-1", job.estimate, timeout_s=30, now=job.now
        )
        if not admission.admitted:
            refusal = admission.refusal
            assert refusal is not None
            return Outcome(job.request_id, False, refusal.error_type, Charge())
        await asyncio.sleep(0)  # let the other requests in between reserve and settle
        await limiter.settle(plan, job.request_id, job.actual)
        return Outcome(job.request_id, True, None, job.actual)

    try:
        return list(await asyncio.gather(*(one(job) for job in jobs)))
    finally:
        if scripts is not None:
            await scripts.aclose()
        await client.aclose()


def run_processes(
    url: str, prefix: str, team_spec: dict[str, Any], jobs: list[list[Job]], runner: str
) -> list[Outcome]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(jobs))
    results = context.Queue()
    processes = [
        context.Process(
            target=_worker, args=(url, prefix, team_spec, share, barrier, results, runner)
        )
        for share in jobs
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    outcomes = [outcome for _ in processes for outcome in results.get(timeout=120)]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    elapsed = time.perf_counter() - started
    print(
        f"\n{runner}: {len(outcomes)} requests from {len(jobs)} processes "
        f"in {elapsed:.2f}s (with spawn)"
    )
    return outcomes


def split(jobs: list[Job]) -> list[list[Job]]:
    return [jobs[i::PROCESSES] for i in range(PROCESSES)]


def used_now(url: str, prefix: str, team_spec: dict[str, Any], now: float) -> dict[str, int]:
    async def read() -> dict[str, int]:
        client = aioredis.from_url(url)
        try:
            limiter = RedisLimiter(client, prefix)
            plan = build_plan("search", Team.model_validate(team_spec), Defaults())
            windows = await limiter.snapshot(plan, now=now)
            assert all(w.reserved == 0 for w in windows)
            return {w.spec.name: w.used for w in windows}
        finally:
            await client.aclose()

    return asyncio.run(read())


@RUNNERS
def test_a_token_budget_is_never_overspent_by_concurrent_gateways(
    redis_url: str, redis_prefix: str, runner: str
) -> None:
    spec = {"budgets": [{"tokens": 2000, "window": "day"}]}
    now = MINUTE_END - 30
    jobs = [Job(f"t{i}", now, Charge(20), Charge(20)) for i in range(PROCESSES * PER_PROCESS)]
    outcomes = run_processes(redis_url, redis_prefix, spec, split(jobs), runner)

    admitted = [o for o in outcomes if o.admitted]
    assert sum(o.settled.tokens for o in admitted) <= 2000
    assert len(admitted) >= 2000 // 20 - 1  # within one request of the most that fit
    assert Counter(o.error_type for o in outcomes if not o.admitted) == {
        "insufficient_quota": len(outcomes) - len(admitted)
    }
    assert used_now(redis_url, redis_prefix, spec, now) == {
        "tokens/day": sum(o.settled.tokens for o in admitted)
    }


@RUNNERS
def test_a_dollar_budget_is_never_overspent_by_concurrent_gateways(
    redis_url: str, redis_prefix: str, runner: str
) -> None:
    spec = {"budgets": [{"usd": 0.05, "window": "month"}]}
    now = MINUTE_END - 30
    # 20 tokens at $25 per million = $0.0005 a request: at most 100 fit in $0.05.
    estimate = Charge(20, 500_000)
    jobs = [Job(f"u{i}", now, estimate, estimate) for i in range(PROCESSES * PER_PROCESS)]
    outcomes = run_processes(redis_url, redis_prefix, spec, split(jobs), runner)

    admitted = [o for o in outcomes if o.admitted]
    spent = sum(o.settled.nano_usd for o in admitted)
    assert spent <= 50_000_000
    assert len(admitted) >= 99
    assert {o.error_type for o in outcomes if not o.admitted} == {"insufficient_quota"}
    assert used_now(redis_url, redis_prefix, spec, now) == {"usd/month": spent}


@RUNNERS
def test_rpm_holds_in_each_minute_when_traffic_crosses_the_boundary(
    redis_url: str, redis_prefix: str, runner: str
) -> None:
    spec = {"limits": {"rpm": 40}}
    before, after = MINUTE_END - 0.5, MINUTE_END + 0.5
    jobs = [
        Job(f"m{i}", before if i % 2 else after, Charge(5), Charge(5))
        for i in range(PROCESSES * PER_PROCESS)
    ]
    outcomes = run_processes(redis_url, redis_prefix, spec, split(jobs), runner)

    by_minute = Counter(
        ("before" if job.now < MINUTE_END else "after")
        for job, outcome in zip(sorted(jobs, key=_id), sorted(outcomes, key=_id), strict=True)
        if outcome.admitted
    )
    assert by_minute == {"before": 40, "after": 40}
    assert {o.error_type for o in outcomes if not o.admitted} == {"rate_limit_exceeded"}
    assert used_now(redis_url, redis_prefix, spec, before) == {"rpm": 40}
    assert used_now(redis_url, redis_prefix, spec, after) == {"rpm": 40}


def _id(item: Job | Outcome) -> str:
    return item.request_id
