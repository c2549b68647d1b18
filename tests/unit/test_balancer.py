"""Replica choice: least outstanding, prefix affinity with a load bound, breakers, max_in_flight."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from gateway.errors import UpstreamError
from gateway.providers.balancer import Balancer, BreakerConfig

REPLICAS = ["10.0.0.5:8000", "10.0.0.6:8000", "10.0.0.7:8000"]


async def test_least_outstanding_without_affinity() -> None:
    balancer = Balancer(REPLICAS)
    taken = [await balancer.acquire() for _ in range(6)]
    assert Counter(taken) == {0: 2, 1: 2, 2: 2}
    balancer.release(1)
    assert await balancer.acquire() == 1  # the only one with a free slot
    assert balancer.in_flight == [2, 2, 2]


async def test_ties_rotate_so_sequential_requests_spread() -> None:
    balancer = Balancer(REPLICAS)
    used: Counter[int] = Counter()
    for _ in range(30):
        index = await balancer.acquire()
        assert index is not None
        used[index] += 1
        balancer.release(index)
    assert used == {0: 10, 1: 10, 2: 10}


async def test_a_shared_prefix_keeps_its_replica() -> None:
    balancer = Balancer(REPLICAS)
    homes = set()
    for _ in range(50):
        index = await balancer.acquire("system-prompt-a")
        assert index is not None
        homes.add(index)
        balancer.release(index)
    assert len(homes) == 1
    # Different prefixes are spread over the replicas by the ring.
    spread: Counter[int] = Counter()
    for key in range(300):
        index = await balancer.acquire(f"prompt-{key}")
        assert index is not None
        spread[index] += 1
        balancer.release(index)
    assert set(spread) == {0, 1, 2} and min(spread.values()) > 50


async def test_affinity_holds_under_the_load_bound_and_spills_over_it() -> None:
    balancer = Balancer(REPLICAS, load_factor=1.25)
    for _ in range(30):  # background traffic: 10 in flight on each replica
        await balancer.acquire()
    home = balancer.choose("system-prompt-a")
    assert home is not None
    # The bound is ceil(1.25 x (in flight + 1) / 3): 1.25 x the mean load. With the others at
    # 10, home takes the prefix up to 15 (15 + 20 in flight: bound 15), then it spills.
    landed = [await balancer.acquire("system-prompt-a") for _ in range(5)]
    assert landed == [home] * 5
    spilled = await balancer.acquire("system-prompt-a")
    assert spilled != home
    assert balancer.in_flight[home] == 15
    # As soon as home is under the bound again, the prefix goes back to it.
    balancer.release(home)
    assert await balancer.acquire("system-prompt-a") == home


async def test_an_open_replica_is_skipped_unless_all_are() -> None:
    balancer = Balancer(REPLICAS[:2], breaker=BreakerConfig(consecutive_failures=2))
    balancer.failure(0)
    balancer.failure(0)
    assert [balancer.choose() for _ in range(4)] == [1, 1, 1, 1]
    assert balancer.choose("any-key") == 1
    balancer.failure(1)
    balancer.failure(1)
    assert balancer.choose() in (0, 1)  # all open: the deployment's breaker decides, not this
    assert balancer.snapshot()[0]["state"] == "open"


async def test_a_429_sends_the_replica_away_for_its_retry_after() -> None:
    times = [100.0]
    balancer = Balancer(REPLICAS[:2], clock=lambda: times[0])
    balancer.failure(0, retry_after_s=3.0)
    assert balancer.choose() == 1 and balancer.choose() == 1
    times[0] = 103.0
    assert {balancer.choose() for _ in range(4)} == {0, 1}


async def test_excluded_replicas_are_not_chosen() -> None:
    balancer = Balancer(REPLICAS)
    assert await balancer.acquire(exclude={0, 1}) == 2
    assert await balancer.acquire(exclude={0, 1, 2}) is None


async def test_max_in_flight_sheds_after_a_brief_wait() -> None:
    balancer = Balancer(REPLICAS[:2], max_in_flight=1, queue_timeout_s=0.05)
    assert {await balancer.acquire(), await balancer.acquire()} == {0, 1}
    with pytest.raises(UpstreamError) as caught:
        await balancer.acquire()
    assert caught.value.status == 503
    assert caught.value.code == "upstream_overloaded"
    assert caught.value.retryable  # the router fails over to the next candidate
    assert balancer.in_flight == [1, 1]


async def test_max_in_flight_queues_until_a_slot_frees() -> None:
    balancer = Balancer(REPLICAS[:2], max_in_flight=1, queue_timeout_s=5.0)
    await balancer.acquire()
    await balancer.acquire()
    waiting = asyncio.ensure_future(balancer.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    balancer.release(1)
    assert await waiting == 1
    assert balancer.in_flight == [1, 1]


async def test_the_queue_is_bounded() -> None:
    balancer = Balancer(REPLICAS[:1], max_in_flight=1, queue_timeout_s=5.0)
    await balancer.acquire()
    waiting = asyncio.ensure_future(balancer.acquire())
    await asyncio.sleep(0)
    with pytest.raises(UpstreamError):  # one waiter per slot at most: shed at once
        await balancer.acquire()
    balancer.release(0)
    assert await waiting == 0


def test_a_balancer_needs_replicas() -> None:
    with pytest.raises(ValueError):
        Balancer([])
