"""The in-process store: LRU bounded by bytes, per-entry expiry; and what a hit costs there."""

from __future__ import annotations

import asyncio
import time

from gateway.cache import entry as entries
from gateway.cache.replay import replay_json, replay_stream
from gateway.cache.store import MemoryCacheStore


async def test_put_get_and_overwrite_keep_the_byte_count_right() -> None:
    store = MemoryCacheStore(max_bytes=100)
    await store.put("a", b"x" * 10, 60)
    await store.put("b", b"y" * 20, 60)
    assert await store.get("a") == b"x" * 10
    await store.put("a", b"z" * 5, 60)
    assert await store.get("a") == b"z" * 5
    assert store.size == 25 and len(store) == 2
    assert await store.get("missing") is None


async def test_least_recently_used_entries_go_first_when_full() -> None:
    store = MemoryCacheStore(max_bytes=30)
    for key in ("a", "b", "c"):
        await store.put(key, b"." * 10, 60)
    assert await store.get("a") is not None  # a is now the most recently used
    await store.put("d", b"." * 10, 60)
    assert await store.get("b") is None
    assert all([await store.get(k) is not None for k in ("a", "c", "d")])
    assert store.size == 30


async def test_an_entry_bigger_than_the_store_is_not_kept() -> None:
    store = MemoryCacheStore(max_bytes=10)
    await store.put("small", b"12345", 60)
    await store.put("big", b"x" * 11, 60)
    assert await store.get("big") is None
    assert await store.get("small") == b"12345"


async def test_entries_expire() -> None:
    store = MemoryCacheStore()
    await store.put("short", b"1", 0.05)
    await store.put("long", b"2", 60)
    await store.put("none", b"3", 0)
    assert await store.get("short") == b"1"
    await asyncio.sleep(0.1)
    assert await store.get("short") is None
    assert await store.get("long") == b"2"
    assert await store.get("none") is None
    assert store.size == 1


async def test_expired_entries_at_the_cold_end_are_swept_on_writes() -> None:
    store = MemoryCacheStore()
    await store.put("old", b"x" * 100, 0.01)
    await asyncio.sleep(0.05)
    await store.put("new", b"y", 60)
    assert len(store) == 1 and store.size == 1


def test_hit_cost_in_process() -> None:
    """Measured, not asserted: memory get + decode + JSON replay, and + SSE replay."""
    answer = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "word " * 160},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 200, "completion_tokens": 160, "total_tokens": 360},
    }
    raw = entries.from_answer(answer, entries.CHAT, deployment="m", cost_usd=0.01)
    assert raw is not None
    store = MemoryCacheStore()
    store.put_now("k", raw, 60)
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        found = entries.decode(store.get_now("k") or b"")
        assert found is not None
        replay_json(found)
    json_us = (time.perf_counter() - started) / rounds * 1e6
    started = time.perf_counter()
    for _ in range(2_000):
        found = entries.decode(store.get_now("k") or b"")
        assert found is not None
        replay_stream(found, include_usage=True)
    sse_us = (time.perf_counter() - started) / 2_000 * 1e6
    print(
        f"\nmemory hit ({len(raw)} B entry): get+decode+json {json_us:.2f} us, +sse {sse_us:.1f} us"
    )
