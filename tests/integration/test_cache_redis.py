"""The cache against a real Redis: the store, key layout, Redis going away, and single flight
across replicas (two PromptCache instances sharing one Redis)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.cache.keys import lock_key
from gateway.cache.service import CachePlan, PromptCache
from gateway.cache.store import RedisCacheStore
from gateway.policy.schema import PolicyDocument
from tests.support.cache_upstream import SlowUpstream, answer
from tests.support.cache_upstream import document as cached_route
from tests.support.services import ThrowawayRedis

CHAT = "chat/completions"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "seed": 3}


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    yield connection
    await connection.aclose()


def document(**cache: Any) -> PolicyDocument:
    return cached_route(timeout_s=10, **cache)


async def serve(
    cache: PromptCache, doc: PolicyDocument, upstream: SlowUpstream, team: str = "search"
) -> tuple[CachePlan, bytes]:
    plan = cache.plan(doc, "chat", CHAT, BODY, {}, team)
    assert plan is not None
    hit = await cache.lookup(plan)
    if hit is not None:
        return plan, cache.replay_json(hit)
    try:
        body = await upstream()
    except BaseException:
        cache.abandon(plan)
        raise
    await cache.store(plan, cache.entry_from_json(plan, body, deployment="m", cost_usd=0.002))
    return plan, body


async def test_redis_store_put_get_and_ttl(client: aioredis.Redis, redis_prefix: str) -> None:
    store = RedisCacheStore(client)
    key = f"{redis_prefix}cache:abc"
    await store.put(key, b"value", 0.3)
    assert await store.get(key) == b"value"
    ttl_ms = await client.pttl(key)
    assert 0 < ttl_ms <= 300
    await asyncio.sleep(0.4)
    assert await store.get(key) is None
    assert await store.get(f"{redis_prefix}cache:never") is None


async def test_entries_live_under_the_prefix_with_the_teams_hash_tag(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    cache, doc = PromptCache(RedisCacheStore(client), redis_prefix), document(ttl_s=30)
    plan, _ = await serve(cache, doc, SlowUpstream(delay_s=0))
    assert plan.key.startswith(f"{redis_prefix}{{team:search}}:cache:")
    assert 0 < await client.pttl(plan.key) <= 30_000
    assert await client.exists(lock_key(plan.key)) == 0  # the leader's lock is gone
    shared = PromptCache(RedisCacheStore(client), redis_prefix)
    shared_plan, _ = await serve(shared, document(scope="shared"), SlowUpstream(delay_s=0))
    assert shared_plan.key.startswith(f"{redis_prefix}cache:")


async def test_hit_miss_and_other_team(client: aioredis.Redis, redis_prefix: str) -> None:
    cache, doc, upstream = (
        PromptCache(RedisCacheStore(client), redis_prefix),
        document(),
        SlowUpstream(0),
    )
    first, body = await serve(cache, doc, upstream)
    second, again = await serve(cache, doc, upstream)
    assert (first.status, second.status, upstream.calls) == ("miss", "hit", 1)
    assert second.hit is not None and second.hit.deployment == "m"
    assert second.hit.cost_usd == 0.002 and second.hit.prompt_tokens == 8
    assert strip_stamp(body) == strip_stamp(again)
    other, _ = await serve(cache, doc, upstream, team="ads")
    assert other.status == "miss" and upstream.calls == 2


def strip_stamp(raw: bytes) -> dict[str, Any]:
    return {k: v for k, v in orjson.loads(raw).items() if k not in ("id", "created")}


async def test_max_entry_bytes_in_redis(client: aioredis.Redis, redis_prefix: str) -> None:
    cache, doc = PromptCache(RedisCacheStore(client), redis_prefix), document(max_entry_bytes=100)
    plan, _ = await serve(cache, doc, SlowUpstream(0))
    assert await client.exists(plan.key) == 0
    assert await client.exists(lock_key(plan.key)) == 0


async def test_ttl_header_sets_the_entry_lifetime(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    cache = PromptCache(RedisCacheStore(client), redis_prefix)
    plan = cache.plan(document(ttl_s=600), "chat", CHAT, BODY, {"x-tollgate-cache-ttl": "2"}, "t")
    assert plan is not None and await cache.lookup(plan) is None
    await cache.store(plan, cache.entry_from_json(plan, answer("x"), deployment="m", cost_usd=0))
    assert 0 < await client.pttl(plan.key) <= 2000


async def test_redis_down_means_misses_and_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    with ThrowawayRedis() as server:
        connection = aioredis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            store = RedisCacheStore(connection, retry_after_s=0.2)
            cache, doc, upstream = PromptCache(store, "tg:"), document(), SlowUpstream(0)
            plan, _ = await serve(cache, doc, upstream)
            assert plan.status == "miss" and await store.get(plan.key) is not None
            server.kill()
            caplog.set_level(logging.WARNING, logger="tollgate.cache")
            for _ in range(3):
                plan, _ = await serve(cache, doc, upstream)
                assert plan.status == "miss"
                await asyncio.sleep(0.25)  # past retry_after_s: each one asks Redis again
            assert await store.get(plan.key) is None
            await store.put(plan.key, b"x", 10)
            assert await store.claim(plan.key, "lock", "t", 1) == (None, True)
            assert upstream.calls == 4 and store.errors >= 3
            warnings = [r for r in caplog.records if r.name == "tollgate.cache"]
            assert len(warnings) == 1  # once per log interval, not once per request
            server.start()
            await asyncio.sleep(0.25)
            plan, _ = await serve(cache, doc, upstream)  # the store works again: entry written
            plan, _ = await serve(cache, doc, upstream)
            assert plan.status == "hit" and upstream.calls == 5
        finally:
            await connection.aclose()


async def test_single_flight_across_two_replicas(client: aioredis.Redis, redis_prefix: str) -> None:
    one = PromptCache(RedisCacheStore(client), redis_prefix)
    two = PromptCache(RedisCacheStore(client), redis_prefix)
    doc, upstream = document(), SlowUpstream(delay_s=0.2)
    results = await asyncio.gather(
        *(serve(replica, doc, upstream) for _ in range(25) for replica in (one, two))
    )
    assert upstream.calls == 1
    assert sorted(plan.status for plan, _ in results).count("hit") == 49


async def test_leader_failure_on_one_replica_lets_the_other_take_over(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    one = PromptCache(RedisCacheStore(client), redis_prefix)
    two = PromptCache(RedisCacheStore(client), redis_prefix)
    doc, upstream = document(), SlowUpstream(delay_s=0.1, failures=1)
    first = asyncio.create_task(serve(one, doc, upstream))
    # Until replica one holds the lock and is calling upstream (a counter, not an event, is
    # what the fake upstream exposes).
    while upstream.calls == 0:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    plan, body = await serve(two, doc, upstream)
    print(f"\ntakeover after the leader's failure: {(time.perf_counter() - started) * 1000:.0f} ms")
    with pytest.raises(RuntimeError):
        await first
    assert upstream.calls == 2 and plan.status == "miss"
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "answer 2"
    await one.aclose()
    assert await client.exists(lock_key(plan.key)) == 0


async def test_redis_round_trip_cost(client: aioredis.Redis, redis_prefix: str) -> None:
    """Measured, not asserted: a cache read (GET) and the claim script, one in flight."""
    store = RedisCacheStore(client)
    key = f"{redis_prefix}{{team:t}}:cache:bench"
    await store.put(key, answer("x" * 800), 60)
    for name, call in (
        ("get (hit)", lambda: store.get(key)),
        ("claim (hit)", lambda: store.claim(key, key + ":lock", "tok", 1)),
    ):
        for _ in range(50):
            await call()
        timings = []
        for _ in range(500):
            started = time.perf_counter()
            await call()
            timings.append(time.perf_counter() - started)
        timings.sort()
        print(f"\nredis {name}: p50 {timings[250] * 1e6:.0f} us, p99 {timings[495] * 1e6:.0f} us")


async def test_with_a_redis_client_the_cache_lives_in_redis(client: aioredis.Redis) -> None:
    assert isinstance(PromptCache.build(client, "t:").backend, RedisCacheStore)
