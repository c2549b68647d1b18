"""Routing stats shared by gateway replicas through a real Redis, and surviving its loss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.routing import RoutingStats, StatsConfig, StatsSync
from gateway.routing.stats import TTFT
from tests.support.services import ThrowawayRedis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.from_url(redis_url, socket_timeout=2.0)
    yield connection
    await connection.aclose()


def observe(stats: RoutingStats, deployment: str, ttft_s: float, count: int) -> None:
    for _ in range(count):
        stats.started(deployment)
        stats.finished(
            "chat", deployment, "10.0.0.5:8000", ok=True, ttft_s=ttft_s, total_s=ttft_s * 3,
            output_tokens=20, slo_met=ttft_s < 0.25,
        )  # fmt: skip


async def test_two_replicas_see_each_others_observations(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    one, two = RoutingStats(), RoutingStats()
    sync_one = StatsSync(one, client, redis_prefix, "gateway-1")
    sync_two = StatsSync(two, client, redis_prefix, "gateway-2")
    observe(one, "pool", 0.8, 30)  # replica one saw a slow pool
    observe(two, "api", 0.1, 30)  # replica two saw a fast API
    one.started("pool")  # and one request is still running on replica one
    assert await sync_one.sync() == 0  # nobody else yet
    assert await sync_two.sync() == 1
    assert await sync_one.sync() == 1
    for stats in (one, two):
        assert stats.deployment("pool").quantile(TTFT, 0.5) == pytest.approx(0.8, rel=0.1)
        assert stats.deployment("api").quantile(TTFT, 0.5) == pytest.approx(0.1, rel=0.1)
    assert two.deployment("pool").remote_in_flight == 1
    assert one.deployment("pool").remote_in_flight == 0  # its own request is local
    view = two.route_stats("chat")
    assert view["requests"] == pytest.approx(60, rel=0.01)
    assert view["goodput"] == pytest.approx(0.5, abs=0.01)
    assert set(view["traffic_share"]) == {"pool", "api"}
    # Syncing again replaces, never adds: still 30 observations of the pool.
    await sync_two.sync()
    assert two.deployment("pool").observations() == pytest.approx(30, rel=0.05)
    keys = {
        key.decode() if isinstance(key, bytes) else key
        for key in await client.keys(redis_prefix + "*")
    }
    assert keys == {f"{redis_prefix}routing:v1:snapshots", f"{redis_prefix}routing:v1:seen"}


async def test_background_sync_and_withdrawal_on_close(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    config = StatsConfig(sync_interval_s=0.05)
    one, two = RoutingStats(config), RoutingStats(config)
    sync_one = StatsSync(one, client, redis_prefix, "gateway-1")
    sync_two = StatsSync(two, client, redis_prefix, "gateway-2")
    sync_one.start()
    sync_two.start()
    try:
        observe(one, "pool", 0.3, 10)
        for _ in range(500):  # synced within a few intervals; 10 s at most
            if two.deployment("pool").observations() >= 9:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("replica two never saw replica one's observations")
    finally:
        await sync_one.aclose()
    assert await client.hexists(f"{redis_prefix}routing:v1:snapshots", sync_one.gateway_id) == 0
    await sync_two.aclose()


async def test_a_silent_gateway_is_forgotten(client: aioredis.Redis, redis_prefix: str) -> None:
    config = StatsConfig(forget_after_s=30.0)
    wall = [1_000_000.0]
    one, two = RoutingStats(config), RoutingStats(config)
    sync_one = StatsSync(one, client, redis_prefix, "gateway-1", wall=lambda: wall[0])
    sync_two = StatsSync(two, client, redis_prefix, "gateway-2", wall=lambda: wall[0])
    observe(one, "pool", 0.3, 10)
    await sync_one.sync()
    wall[0] += 31.0  # gateway one died half a minute ago
    assert await sync_two.sync() == 0
    snapshots = await client.hkeys(f"{redis_prefix}routing:v1:snapshots")
    assert snapshots == [sync_two.gateway_id.encode()]


async def test_without_redis_stats_stay_local() -> None:
    stats = RoutingStats()
    sync = StatsSync(stats, None, "tollgate:", "embedded")
    sync.start()  # a no-op
    observe(stats, "pool", 0.2, 5)
    assert await sync.sync() == 0
    await sync.aclose()
    assert stats.deployment("pool").observations() == pytest.approx(5, rel=0.01)


async def test_routing_keeps_working_while_redis_is_down() -> None:
    with ThrowawayRedis() as server:
        client = aioredis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        one, two = RoutingStats(), RoutingStats()
        sync_one = StatsSync(one, client, "t:", "gateway-1")
        sync_two = StatsSync(two, client, "t:", "gateway-2")
        observe(one, "pool", 0.4, 10)
        await sync_one.sync()
        await sync_two.sync()
        server.kill()
        with pytest.raises((RedisError, OSError)):
            await sync_one.sync()
        observe(two, "pool", 0.1, 10)  # local observations go on while Redis is away
        assert two.deployment("pool").observations() == pytest.approx(20, rel=0.05)
        server.start()  # back, empty: the next syncs rebuild the shared view
        await sync_one.sync()
        assert await sync_two.sync() == 1
        assert two.deployment("pool").observations() == pytest.approx(20, rel=0.05)
        await client.aclose()
