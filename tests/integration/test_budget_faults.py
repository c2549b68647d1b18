"""Redis going away under traffic: BudgetUnavailable at once, never a hang or a crash, and
recovery on its own when Redis comes back. Only throwaway servers are killed here.

The client is configured the way the gateway's should be (``fail_fast_options``: short socket
timeouts, one immediate retry on a broken connection, none on a timeout). Each test runs with
the scripts on redis-py and on the lean script client (``gateway.redis_scripts``, same timeout),
which must fail and recover the same way. Durations are printed, not asserted; the waits only
guard against a hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.budget import BudgetUnavailable, Charge, RedisLimiter, build_plan
from gateway.budget.redis_limiter import fail_fast_options
from gateway.policy.schema import Defaults, Team
from gateway.redis_scripts import ScriptClient
from tests.support.services import ThrowawayRedis

PLAN = build_plan(
    "faulty",
    Team.model_validate(
        {"budgets": [{"tokens": 10**9, "window": "day"}], "limits": {"rpm": 10**6}}
    ),
    Defaults(),
)


def client_for(url: str) -> aioredis.Redis:
    return aioredis.from_url(url, **fail_fast_options(0.25))


@pytest.fixture(params=["redis", "redis-lean"])
def runner(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def limiter_for(
    url: str, runner: str, prefix: str, **options: Any
) -> AsyncIterator[RedisLimiter]:
    """A limiter on ``url`` whose scripts run on redis-py or on the lean client."""
    client = client_for(url)
    scripts = ScriptClient.from_url(url, socket_timeout_s=0.25) if runner == "redis-lean" else None
    try:
        yield RedisLimiter(client, prefix, scripts=scripts, **options)
    finally:
        if scripts is not None:
            await scripts.aclose()
        await client.aclose()


@dataclass
class Traffic:
    """reserve + settle in a loop, recording what each attempt ended in."""

    limiter: RedisLimiter
    outcomes: list[str] = field(default_factory=list)
    slowest_failure_s: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            started = time.perf_counter()
            try:
                admission = await self.limiter.reserve(f"q{i}", PLAN, "k", Charge(10), timeout_s=30)
                assert admission.admitted
                await self.limiter.settle(PLAN, f"q{i}", Charge(7))
                self.outcomes.append("ok")
            except BudgetUnavailable:
                self.outcomes.append("unavailable")
                self.slowest_failure_s = max(self.slowest_failure_s, time.perf_counter() - started)
            await asyncio.sleep(0.002)

    @staticmethod
    async def until(what: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Wait for ``what`` to hold; a hang guard, not a timing assertion."""
        for _ in range(int(timeout_s / 0.01)):
            if what():
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(f"still waiting after {timeout_s} s")

    def count(self, outcome: str) -> int:
        return Counter(self.outcomes)[outcome]


@pytest.fixture
async def server() -> AsyncIterator[ThrowawayRedis]:
    with ThrowawayRedis() as started:
        yield started


async def test_killed_redis_fails_fast_and_recovers_after_a_restart(
    server: ThrowawayRedis, runner: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tollgate.budget")
    async with limiter_for(
        server.url, runner, "fault:", probe_interval_s=0.1, log_interval_s=3600
    ) as limiter:
        traffic = Traffic(limiter)
        task = asyncio.create_task(traffic.run())
        try:
            await traffic.until(lambda: traffic.count("ok") >= 50)
            server.kill()
            killed_at = len(traffic.outcomes)
            await traffic.until(lambda: traffic.count("unavailable") >= 100)
            assert not limiter.healthy
            status = limiter.status()
            assert status["ok"] is False and status["backend"] == "redis" and status["error"]

            server.start()  # same port, empty: the scripts must be loaded again by themselves
            restarted_at = len(traffic.outcomes)
            await traffic.until(lambda: traffic.outcomes[-1] == "ok" and limiter.healthy)
            await traffic.until(lambda: traffic.outcomes[restarted_at:].count("ok") >= 50)
        finally:
            traffic.stop.set()
            await asyncio.wait_for(task, 10)  # the traffic loop never crashed

    after_kill = traffic.outcomes[killed_at:restarted_at]
    assert after_kill.count("unavailable") >= 100
    assert limiter.status() == {"ok": True, "backend": "redis"}
    # One warning for the whole outage (the interval is an hour), one when it ended.
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("budget store unreachable; applying each team's on_redis_down") == 1
    assert messages.count("budget store reachable again") == 1
    print(
        f"\n{runner}: {len(traffic.outcomes)} attempts, {traffic.count('unavailable')} "
        f"unavailable; slowest failure {traffic.slowest_failure_s * 1000:.1f} ms"
    )


async def test_a_hung_redis_costs_one_timeout_per_probe_interval(
    server: ThrowawayRedis, runner: str
) -> None:
    pid = server._process.pid if server._process else None
    assert pid is not None
    async with limiter_for(server.url, runner, "hang:", probe_interval_s=0.2) as limiter:
        traffic = Traffic(limiter)
        task = asyncio.create_task(traffic.run())
        try:
            await traffic.until(lambda: traffic.count("ok") >= 20)
            os.kill(pid, signal.SIGSTOP)  # Redis stops answering, connections stay open
            await traffic.until(lambda: traffic.count("unavailable") >= 50)
            os.kill(pid, signal.SIGCONT)
            resumed_at = len(traffic.outcomes)
            await traffic.until(lambda: traffic.outcomes[resumed_at:].count("ok") >= 20)
        finally:
            os.kill(pid, signal.SIGCONT)
            traffic.stop.set()
            await asyncio.wait_for(task, 10)
    assert limiter.healthy
    print(
        f"\n{runner}: {traffic.count('unavailable')} unavailable while hung; "
        f"slowest failure {traffic.slowest_failure_s * 1000:.1f} ms"
    )
