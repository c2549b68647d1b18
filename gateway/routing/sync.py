"""Sharing routing stats between gateway replicas through Redis, once a second, in one call.

Each gateway pushes a snapshot of its *own* decayed observations and pulls every other gateway's
(``lua/sync_stats.lua``: HSET + HGETALL in one script, one round trip). Pushing whole decayed
state rather than deltas makes a sync idempotent: a failed or repeated sync, or a Redis restart,
neither loses nor double-counts anything, and a gateway that stops simply fades out (and is
deleted after ``forget_after_s``). Without Redis (embedded mode) nothing is started and the stats
stay local.

Keys: ``{prefix}routing:v1:snapshots`` (hash) and ``{prefix}routing:v1:seen`` (sorted set).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.routing.goodput import ROUTE_SIZE
from gateway.routing.stats import REPLICA_SIZE, SIZE, RoutingStats
from gateway.tasks import cancel_and_wait

log = logging.getLogger("tollgate.routing")

FORMAT = 1
# Weights below this (relative to one fresh observation) are not worth sending.
_NEGLIGIBLE = 1e-6


def _lua() -> str:
    return importlib.resources.files("gateway.routing").joinpath("lua/sync_stats.lua").read_text()


def snapshot(stats: RoutingStats, now: float, wall: float) -> bytes:
    """This gateway's own observations, decayed to ``now``, as a JSON snapshot."""
    deployments: dict[str, Any] = {}
    for name, found in stats.deployments.items():
        found.advance(now)
        inverse = 1.0 / found.scale
        weights: list[float] = []
        for index, value in enumerate(found.local):
            if value * inverse > _NEGLIGIBLE:
                weights += (index, value * inverse)
        replicas = {
            replica: [value * inverse for value in values.local]
            for replica, values in found.replicas.items()
            if any(value * inverse > _NEGLIGIBLE for value in values.local)
        }
        if not weights and not replicas and not found.in_flight:
            continue
        seen = None if found.local_seen is None else wall - (now - found.local_seen)
        deployments[name] = {"h": weights, "f": found.in_flight, "s": seen, "r": replicas}
    routes: dict[str, Any] = {}
    for name, route in stats.routes.items():
        route.advance(now)
        inverse = 1.0 / route.scale
        routes[name] = {
            "v": [value * inverse for value in route.local],
            "served": {key: value * inverse for key, value in route.served.items()},
        }
    return orjson.dumps({"v": FORMAT, "t": wall, "d": deployments, "routes": routes})


class _Remote:
    """Other gateways' snapshots summed, decayed to the time of the merge."""

    def __init__(self) -> None:
        self.weights: dict[str, list[float]] = {}
        self.in_flight: dict[str, int] = {}
        self.seen: dict[str, float] = {}
        self.replicas: dict[tuple[str, str], list[float]] = {}
        self.routes: dict[str, list[float]] = {}
        self.served: dict[str, dict[str, float]] = {}

    def add(self, data: Any, stats: RoutingStats, wall: float) -> None:
        config = stats.config
        age = max(0.0, wall - float(data["t"]))
        if age > config.forget_after_s:
            return
        fade = 0.5 ** (age / config.half_life_s)
        for name, entry in data["d"].items():
            weights = self.weights.setdefault(name, [0.0] * SIZE)
            flat = entry["h"]
            for position in range(0, len(flat), 2):
                weights[int(flat[position])] += float(flat[position + 1]) * fade
            if age <= config.fresh_in_flight_s:
                self.in_flight[name] = self.in_flight.get(name, 0) + int(entry["f"])
            if entry["s"] is not None:
                self.seen[name] = max(self.seen.get(name, -math.inf), float(entry["s"]))
            for replica, values in entry["r"].items():
                total = self.replicas.setdefault((name, replica), [0.0] * REPLICA_SIZE)
                for index in range(REPLICA_SIZE):
                    total[index] += float(values[index]) * fade
        route_fade = 0.5 ** (age / config.route_half_life_s)
        for name, entry in data["routes"].items():
            total = self.routes.setdefault(name, [0.0] * ROUTE_SIZE)
            for index in range(ROUTE_SIZE):
                total[index] += float(entry["v"][index]) * route_fade
            served = self.served.setdefault(name, {})
            for deployment, value in entry["served"].items():
                served[deployment] = served.get(deployment, 0.0) + float(value) * route_fade


def merge(stats: RoutingStats, blobs: Iterable[bytes], now: float, wall: float) -> int:
    """Replace the remote part of every merged view with these snapshots; how many were used."""
    remote = _Remote()
    used = 0
    for blob in blobs:
        try:
            data = orjson.loads(blob)
            if not isinstance(data, dict) or data.get("v") != FORMAT:
                continue
            remote.add(data, stats, wall)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            log.warning("ignoring a malformed routing stats snapshot")
            continue
        used += 1
    for name in set(stats.deployments) | set(remote.weights):
        found = stats.deployment(name, now)
        found.advance(now)
        scale = found.scale
        weights = remote.weights.get(name)
        if weights is None:
            found.merged = list(found.local)
        else:
            found.merged = [
                mine + theirs * scale for mine, theirs in zip(found.local, weights, strict=True)
            ]
        found.recount()
        found.remote_in_flight = remote.in_flight.get(name, 0)
        last = found.local_seen
        seen = remote.seen.get(name)
        if seen is not None:
            converted = now - max(0.0, wall - seen)
            last = converted if last is None else max(last, converted)
        found.last_seen = last
        for replica in set(found.replicas) | {r for d, r in remote.replicas if d == name}:
            values = found.replica(replica)
            theirs = remote.replicas.get((name, replica))
            values.merged = (
                list(values.local)
                if theirs is None
                else [
                    mine + other * scale for mine, other in zip(values.local, theirs, strict=True)
                ]
            )
    for name in set(stats.routes) | set(remote.routes):
        route = stats.route(name, now)
        route.advance(now)
        theirs = remote.routes.get(name)
        route.merged = (
            list(route.local)
            if theirs is None
            else [
                mine + other * route.scale for mine, other in zip(route.local, theirs, strict=True)
            ]
        )
        route.remote_served = {
            key: value * route.scale for key, value in remote.served.get(name, {}).items()
        }
    return used


class StatsSync:
    """The background task that syncs a :class:`RoutingStats` with Redis every second.

    ``gateway_id`` names this process in Redis (a random suffix is added, so workers sharing a
    replica name never overwrite each other's snapshot).
    """

    def __init__(
        self,
        stats: RoutingStats,
        redis: aioredis.Redis | None,
        prefix: str,
        gateway_id: str,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stats = stats
        self.redis = redis
        self.gateway_id = f"{gateway_id}/{secrets.token_hex(4)}"
        self.keys = [f"{prefix}routing:v1:snapshots", f"{prefix}routing:v1:seen"]
        self._wall = wall
        self._script = redis.register_script(_lua()) if redis is not None else None
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self.last_sync: float | None = None
        self.peers = 0

    async def sync(self) -> int:
        """Push ours, pull theirs, merge. Returns how many other gateways were merged."""
        if self._script is None:
            return 0
        stats = self.stats
        blob = snapshot(stats, stats.clock(), self._wall())
        reply = await self._script(
            keys=self.keys,
            args=[self.gateway_id, blob, repr(self._wall()), stats.config.forget_after_s],
        )
        own = self.gateway_id.encode()
        others = [reply[i + 1] for i in range(0, len(reply) - 1, 2) if reply[i] != own]
        self.peers = merge(stats, others, stats.clock(), self._wall())
        self.last_sync = stats.clock()
        return self.peers

    def start(self) -> None:
        """Start syncing in the background (call from the running loop; no-op without Redis)."""
        if self._script is None or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="tollgate-routing-sync"
        )

    async def _run(self) -> None:
        interval = self.stats.config.sync_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self.sync(), timeout=max(interval, 1.0) * 2)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.healthy:
                    log.warning(
                        "routing stats sync failed; routing on local stats",
                        extra={"fields": {"error": type(exc).__name__}},
                    )
                self.healthy = False
                continue
            if not self.healthy:
                log.info("routing stats sync recovered")
            self.healthy = True

    async def aclose(self) -> None:
        """Stop syncing and withdraw this gateway's snapshot (best effort)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self.redis is not None and self.last_sync is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.redis.hdel(self.keys[0], self.gateway_id)
                    await self.redis.zrem(self.keys[1], self.gateway_id)
