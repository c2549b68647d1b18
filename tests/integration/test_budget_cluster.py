"""The Redis limiter on a real 3-master Redis Cluster started for this module.

Every Lua call touches several keys (a team's counters and its reservations); Redis Cluster runs
a script only if all its keys live in one hash slot, which the ``{team:<name>}`` hash tag makes
true. Teams are chosen so that their slots fall on different masters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from gateway.budget import Charge, RedisLimiter, Settlement, build_plan
from gateway.policy.schema import Defaults, Team
from tests.support.redis_cluster import ThrowawayRedisCluster

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC).timestamp()
PREFIX = "tollgate-cluster-test:"
SPEC = {
    "budgets": [{"tokens": 1000, "window": "day"}, {"usd": 1, "window": "month"}],
    "limits": {"rpm": 500, "tpm": 5000},
    "keys_budget": {"tokens": 600, "window": "day"},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayRedisCluster]:
    with ThrowawayRedisCluster(masters=3) as started:
        yield started


@pytest.fixture
async def client(cluster: ThrowawayRedisCluster) -> AsyncIterator[aioredis.RedisCluster]:
    found = aioredis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    await found.initialize()
    try:
        yield found
    finally:
        await found.aclose()


def teams_on_every_master(client: aioredis.RedisCluster, limiter: RedisLimiter) -> list[str]:
    """One team name per master, by the slot its hash tag hashes to."""
    chosen: dict[str, str] = {}
    for i in range(1000):
        name = f"team-{i}"
        slot = key_slot(limiter.team_base(name).encode())
        node = client.nodes_manager.get_node_from_slot(slot)
        chosen.setdefault(node.name, name)
        if len(chosen) == 3:
            return list(chosen.values())
    raise AssertionError("could not find teams on three masters")


async def test_reserve_and_settle_work_for_teams_on_every_master(
    client: aioredis.RedisCluster, cluster: ThrowawayRedisCluster
) -> None:
    limiter = RedisLimiter(client, PREFIX)
    teams = teams_on_every_master(client, limiter)
    for team in teams:
        plan = build_plan(team, Team.model_validate(SPEC), Defaults())
        admitted = await limiter.reserve(
            "r1", plan, "k1", Charge(300, 10**8), timeout_s=30, now=NOW
        )
        assert admitted.admitted
        assert await limiter.extend(plan, "r1", Charge(400, 2 * 10**8), now=NOW)
        await limiter.reserve("r2", plan, "k1", Charge(100, 10**8), timeout_s=30, now=NOW)
        assert await limiter.release(plan, "r2") is Settlement.DONE
        assert await limiter.settle(plan, "r1", Charge(250, 5 * 10**7)) is Settlement.DONE
        windows = {
            w.spec.name: (w.used, w.reserved) for w in await limiter.snapshot(plan, "k1", now=NOW)
        }
        assert windows == {
            "tokens/day": (250, 0),
            "usd/month": (5 * 10**7, 0),
            "rpm": (2, 0),
            "tpm": (250, 0),
            "key tokens/day": (250, 0),
        }

    # Every key a team wrote lives in its team's slot, and the teams span all three masters.
    slots_by_team: dict[str, set[int]] = {team: set() for team in teams}
    for host, port in cluster.nodes:
        node = redis.Redis(host=host, port=port)
        try:
            for key in node.scan_iter(match=f"{PREFIX}*"):
                team = key.decode().split("{team:")[1].split("}")[0]
                slots_by_team[team].add(key_slot(key))
        finally:
            node.close()
    assert all(len(slots) == 1 for slots in slots_by_team.values()), slots_by_team
    nodes = {
        client.nodes_manager.get_node_from_slot(next(iter(slots))).name
        for slots in slots_by_team.values()
    }
    assert len(nodes) == 3


async def test_concurrent_reserves_on_the_cluster_never_overspend(
    client: aioredis.RedisCluster,
) -> None:
    limiter = RedisLimiter(client, PREFIX + "concurrent:")
    teams = teams_on_every_master(client, limiter)
    plans = [build_plan(team, Team.model_validate(SPEC), Defaults()) for team in teams]

    async def one(plan_index: int, i: int) -> bool:
        plan = plans[plan_index]
        admission = await limiter.reserve(
            f"c{i}", plan, f"k{i % 4}", Charge(20), timeout_s=30, now=NOW
        )
        if admission.admitted:
            await limiter.settle(plan, f"c{i}", Charge(20))
        return admission.admitted

    outcomes = await asyncio.gather(*(one(t, i) for t in range(3) for i in range(80)))
    for t, plan in enumerate(plans):
        admitted = sum(outcomes[t * 80 : (t + 1) * 80])
        # 1000 tokens a day for the team; 600 per key, with 4 keys: the team's 1000 binds.
        assert admitted == 50
        [day] = [w for w in await limiter.snapshot(plan, now=NOW) if w.spec.name == "tokens/day"]
        assert (day.used, day.reserved) == (1000, 0)
