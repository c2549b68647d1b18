"""Single flight in one process, through the PromptCache the pipeline uses (in-process store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from gateway.cache.flight import SingleFlight
from gateway.cache.service import CachePlan, PromptCache
from gateway.cache.store import MemoryCacheStore
from gateway.policy.schema import PolicyDocument
from gateway.providers.base import Endpoint
from gateway.sim.config import SimConfig
from gateway.sim.engine import SimEngine, SimStream
from tests.support.cache_upstream import SlowUpstream, answer, document

CHAT = "chat/completions"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


async def serve(
    cache: PromptCache,
    doc: PolicyDocument,
    upstream: Callable[[], Awaitable[bytes]],
    team: str = "search",
    headers: dict[str, str] | None = None,
) -> tuple[CachePlan, bytes]:
    """What the pipeline does around an upstream call."""
    plan = cache.plan(doc, "chat", CHAT, BODY, headers or {}, team)
    assert plan is not None
    hit = await cache.lookup(plan)
    if hit is not None:
        return plan, cache.replay_json(hit)
    try:
        body = await upstream()
    except BaseException:
        cache.abandon(plan)
        raise
    entry = cache.entry_from_json(plan, body, deployment="m", cost_usd=0.001)
    await cache.store(plan, entry)
    return plan, body


async def test_fifty_concurrent_identical_requests_make_one_upstream_call() -> None:
    cache, doc, upstream = PromptCache(MemoryCacheStore(), "t:"), document(), SlowUpstream()
    results = await asyncio.gather(*(serve(cache, doc, upstream) for _ in range(50)))
    assert upstream.calls == 1
    statuses = [plan.status for plan, _ in results]
    assert statuses.count("miss") == 1 and statuses.count("hit") == 49
    contents = {orjson.loads(body)["choices"][0]["message"]["content"] for _, body in results}
    assert contents == {"answer 1"}
    assert len(cache.flight) == 0
    # And the entry outlives the flight: a later request is a hit without an upstream call.
    plan, _ = await serve(cache, doc, upstream)
    assert plan.status == "hit" and upstream.calls == 1


async def test_when_the_leader_fails_the_followers_proceed_on_their_own() -> None:
    cache, doc = PromptCache(MemoryCacheStore(), "t:"), document()
    upstream = SlowUpstream(failures=1)
    results = await asyncio.gather(
        *(serve(cache, doc, upstream) for _ in range(10)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(failed) == 1 and len(served) == 9
    assert upstream.calls == 10  # the leader's failed call, then each follower's own
    assert all(plan.status == "miss" for plan, _ in served)
    assert len(cache.flight) == 0


async def test_followers_wait_no_longer_than_the_route_timeout() -> None:
    cache, doc = PromptCache(MemoryCacheStore(), "t:"), document(timeout_s=0.1)
    stuck = asyncio.Event()

    async def never() -> bytes:
        await stuck.wait()
        return answer("late")

    leader = asyncio.create_task(serve(cache, doc, never))
    await asyncio.sleep(0)
    upstream = SlowUpstream(delay_s=0)
    plan, _ = await serve(cache, doc, upstream)
    assert plan.status == "miss" and upstream.calls == 1
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert len(cache.flight) == 0  # the cancelled leader released its flight


async def test_a_follower_going_away_does_not_disturb_the_others() -> None:
    flight = SingleFlight()
    leader = flight.join("k")
    quitter, stayer = flight.join("k"), flight.join("k")
    assert leader.leader and not quitter.leader and not stayer.leader
    gone = asyncio.create_task(quitter.wait(5))
    staying = asyncio.create_task(stayer.wait(5))
    await asyncio.sleep(0)
    gone.cancel()
    leader.finish(b"entry")
    assert await staying == b"entry"
    leader.finish(None)  # idempotent
    assert len(flight) == 0


async def test_other_teams_do_not_share_a_flight_or_an_entry() -> None:
    cache, doc, upstream = PromptCache(MemoryCacheStore(), "t:"), document(), SlowUpstream()
    await asyncio.gather(
        serve(cache, doc, upstream, team="a"), serve(cache, doc, upstream, team="b")
    )
    assert upstream.calls == 2


async def test_shared_scope_shares_across_teams() -> None:
    cache, doc, upstream = (
        PromptCache(MemoryCacheStore(), "t:"),
        document(scope="shared"),
        SlowUpstream(),
    )
    await serve(cache, doc, upstream, team="a")
    plan, _ = await serve(cache, doc, upstream, team="b")
    assert plan.status == "hit" and upstream.calls == 1


async def test_no_store_requests_follow_but_never_lead() -> None:
    cache, doc, upstream = PromptCache(MemoryCacheStore(), "t:"), document(), SlowUpstream()
    no_store = {"cache-control": "no-store"}
    first, second = await asyncio.gather(
        serve(cache, doc, upstream, headers=no_store), serve(cache, doc, upstream, headers=no_store)
    )
    assert upstream.calls == 2 and first[0].status == second[0].status == "miss"
    # A storing leader in flight: the no-store request takes its answer.
    results = await asyncio.gather(
        serve(cache, doc, upstream), serve(cache, doc, upstream, headers=no_store)
    )
    assert upstream.calls == 3 and [p.status for p, _ in results] == ["miss", "hit"]


async def test_no_cache_skips_reading_but_stores() -> None:
    cache, doc, upstream = (
        PromptCache(MemoryCacheStore(), "t:"),
        document(),
        SlowUpstream(delay_s=0),
    )
    await serve(cache, doc, upstream)
    plan, body = await serve(cache, doc, upstream, headers={"cache-control": "no-cache"})
    assert plan.status == "bypass" and upstream.calls == 2
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "answer 2"
    plan, body = await serve(cache, doc, upstream)
    assert plan.status == "hit"
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "answer 2"


async def test_entries_over_max_entry_bytes_are_not_kept() -> None:
    cache, doc, upstream = (
        PromptCache(MemoryCacheStore(), "t:"),
        document(max_entry_bytes=64),
        SlowUpstream(delay_s=0),
    )
    await serve(cache, doc, upstream)
    plan, _ = await serve(cache, doc, upstream)
    assert plan.status == "miss" and upstream.calls == 2
    assert len(cache.backend) == 0  # type: ignore[arg-type]


async def test_uncacheable_requests_bypass_and_routes_without_cache_have_no_plan() -> None:
    cache = PromptCache(MemoryCacheStore(), "t:")
    doc = document()
    hot = {**BODY, "temperature": 0.8}
    plan = cache.plan(doc, "chat", CHAT, hot, {}, "search")
    assert plan is not None and plan.status == "bypass" and plan.key == ""
    assert await cache.lookup(plan) is None and not plan.writes
    bare = PolicyDocument.model_validate(
        {
            "providers": {"sim": {"type": "sim"}},
            "models": {"m": {"provider": "sim", "model": "m"}},
            "routes": {"chat": {"candidates": ["m"]}},
        }
    )
    assert cache.plan(bare, "chat", CHAT, BODY, {}, "search") is None


async def test_a_plan_hashed_off_the_loop_names_the_same_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Big prompts are hashed in a worker thread; the key must be the one the loop would make,
    and a request that neither reads nor writes the cache costs no hash."""
    cache = PromptCache(MemoryCacheStore(), "t:")
    doc = document()
    big = {**BODY, "messages": [{"role": "user", "content": "word " * 40_000}]}
    on_loop = cache.plan(doc, "chat", CHAT, big, {}, "search")
    off_loop = await cache.plan_off_loop(doc, "chat", CHAT, big, {}, "search")
    assert on_loop is not None and off_loop is not None
    assert off_loop.key == on_loop.key and off_loop.status == on_loop.status == "miss"
    other = await cache.plan_off_loop(doc, "chat", CHAT, BODY, {}, "search")
    assert other is not None and other.key != on_loop.key
    bare = PolicyDocument.model_validate(
        {
            "providers": {"sim": {"type": "sim"}},
            "models": {"m": {"provider": "sim", "model": "m"}},
            "routes": {"chat": {"candidates": ["m"]}},
        }
    )
    assert await cache.plan_off_loop(bare, "chat", CHAT, big, {}, "search") is None

    def no_hash(*args: object) -> str:
        raise AssertionError("hashed a body no cache entry is named for")

    monkeypatch.setattr("gateway.cache.service.request_hash", no_hash)
    hot = {**big, "temperature": 0.8}  # the default mode caches deterministic requests only
    bypassed = await cache.plan_off_loop(doc, "chat", CHAT, hot, {}, "search")
    assert bypassed is not None and bypassed.status == "bypass" and bypassed.key == ""
    refused = cache.plan(doc, "chat", CHAT, big, {"cache-control": "no-store, no-cache"}, "search")
    assert refused is not None and refused.key == ""


async def relay(
    cache: PromptCache, plan: CachePlan, events: AsyncIterator[bytes]
) -> AsyncGenerator[bytes, None]:
    """The pipeline's relay for a streamed miss: feed, store before [DONE], abandon otherwise."""
    assembler = cache.assembler(plan)
    try:
        async for event in events:
            if assembler is not None:
                assembler.feed(event)
            if event.startswith(b"data: [DONE]") and assembler is not None:
                entry = cache.entry_from_stream(plan, assembler, deployment="sim", cost_usd=0.0)
                await cache.store(plan, entry)
            yield event
    finally:
        cache.abandon(plan)


async def sim_stream(body: dict[str, Any]) -> AsyncIterator[bytes]:
    engine = SimEngine(SimConfig(ttft_ms=20, tokens_per_s=500))
    stream = await engine.handle(Endpoint.CHAT, {**body, "stream": True}, stream=True)
    assert isinstance(stream, SimStream)
    async for event in stream:
        yield event


STREAM_BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "stream please"}],
    "temperature": 0,
    "max_tokens": 20,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def test_a_streamed_miss_is_stored_before_done_and_shared_with_followers() -> None:
    store = MemoryCacheStore()
    cache, doc = PromptCache(store, "t:"), document()
    plan = cache.plan(doc, "chat", CHAT, STREAM_BODY, {}, "search")
    assert plan is not None and await cache.lookup(plan) is None

    async def follower() -> CachePlan:
        other = cache.plan(doc, "chat", CHAT, {**STREAM_BODY, "stream": False}, {}, "search")
        assert other is not None
        assert await cache.lookup(other) is not None
        return other

    waiting = asyncio.create_task(follower())
    text, stored_before_done = "", False
    async for event in relay(cache, plan, sim_stream(STREAM_BODY)):
        if event.startswith(b"data: [DONE]"):
            stored_before_done = store.get_now(plan.key) is not None
        elif b'"content"' in event:
            text += orjson.loads(event[6:])["choices"][0]["delta"].get("content") or ""
    assert stored_before_done
    other = await waiting
    assert other.status == "hit" and other.hit is not None
    assert orjson.loads(other.hit.body)["choices"][0]["message"]["content"] == text
    assert other.hit.completion_tokens == 20


async def test_a_stream_cut_short_is_not_stored_and_releases_its_followers() -> None:
    store = MemoryCacheStore()
    cache, doc = PromptCache(store, "t:"), document()
    plan = cache.plan(doc, "chat", CHAT, STREAM_BODY, {}, "search")
    assert plan is not None and await cache.lookup(plan) is None
    follower = cache.plan(doc, "chat", CHAT, STREAM_BODY, {}, "search")
    assert follower is not None
    waiting = asyncio.create_task(cache.lookup(follower))
    relayed = relay(cache, plan, sim_stream(STREAM_BODY))
    async for _ in relayed:
        break  # the client went away after the first event
    await relayed.aclose()
    assert await waiting is None and follower.status == "miss"
    assert follower.ticket is None  # proceeding on its own, not leading
    assert len(store) == 0 and len(cache.flight) == 0


def test_without_redis_the_cache_lives_in_process() -> None:
    cache = PromptCache.build(None, "t:", memory_max_bytes=1000)
    assert isinstance(cache.backend, MemoryCacheStore) and cache.backend.max_bytes == 1000
