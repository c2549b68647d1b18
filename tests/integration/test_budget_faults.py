"""Redis going away under traffic: BudgetUnavailable at once, never a hang or a crash, and
recovery on its own when Redis comes back. Only throwaway servers are killed here.

The client is configured the way the gateway's should be (``fail_fast_options``: short socket
timeouts, one immediate retry on a broken connection, none on a timeout). Durations are printed,
not asserted; the waits only guard against a hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from gateway.budget import BudgetUnavailable, Charge, RedisLimiter, build_plan
from gateway.budget.redis_limiter import fail_fast_options
from gateway.policy.schema import Defaults, Team
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
    server: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tollgate.budget")
    client = client_for(server.url)
    limiter = RedisLimiter(client, "fault:", probe_interval_s=0.1, log_interval_s=3600)
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
        await client.aclose()

    after_kill = traffic.outcomes[killed_at:restarted_at]
    assert after_kill.count("unavailable") >= 100
    assert limiter.status() == {"ok": True, "backend": "redis"}
    # One warning for the whole outage (the interval is an hour), one when it ended.
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("budget store unreachable; applying each team's on_redis_down") == 1
    assert messages.count("budget store reachable again") == 1
    print(
        f"\n{len(traffic.outcomes)} attempts, {traffic.count('unavailable')} unavailable; "
        f"slowest failure {traffic.slowest_failure_s * 1000:.1f} ms"
    )


async def test_a_hung_redis_costs_one_timeout_per_probe_interval(server: ThrowawayRedis) -> None:
    client = client_for(server.url)
    limiter = RedisLimiter(client, "hang:", probe_interval_s=0.2)
    traffic = Traffic(limiter)
    task = asyncio.create_task(traffic.run())
    pid = server._process.pid if server._process else None
    assert pid is not None
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
        await client.aclose()
    assert limiter.healthy
    print(
        f"\n{traffic.count('unavailable')} unavailable while hung; "
        f"slowest failure {traffic.slowest_failure_s * 1000:.1f} ms"
    )
