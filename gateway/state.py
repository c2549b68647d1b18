"""Shared state: Redis when ``TOLLGATE_REDIS_URL`` is set, else kept in this process.

The embedded default keeps what would live in Redis in process (one worker only, since nothing
would be shared between workers). Budget counters, routing statistics and the prompt cache build
on this.

Two clients share the Redis: redis-py for everything else and, for a standalone Redis at a plain
``redis://``/``rediss://`` URL, a lean script runner (:mod:`gateway.redis_scripts`) for the
budget's Lua calls, the two round trips every request makes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.budget import fail_fast_options
from gateway.redis_scripts import ScriptClient

log = logging.getLogger("tollgate.state")


class StateStore:
    """The handle on shared state, and its health for /readyz."""

    def __init__(
        self,
        redis_url: str | None,
        prefix: str,
        max_connections: int = 64,
        socket_timeout_s: float = 2.0,
        *,
        lean_scripts: bool = True,
    ) -> None:
        self.prefix = prefix
        self.redis: aioredis.Redis | None = None
        # None when the URL is one only redis-py handles (unix socket, Sentinel, options in
        # the query string): the scripts then run through redis-py, as everything else does.
        self.scripts: ScriptClient | None = None
        if redis_url:
            # A bounded pool that makes requests wait for a free connection: a burst of
            # requests must not open hundreds of sockets at once (connection storms time out
            # and look like an outage). The timeouts bound how long a dead Redis can stall a
            # request before the team's on_redis_down applies.
            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url,
                max_connections=max_connections,
                timeout=2.0,
                health_check_interval=10,
                # One immediate retry on a broken connection (a pooled socket after a Redis
                # restart), none on a timeout: a Redis that is gone fails in microseconds, a
                # hung one within the socket timeout.
                **fail_fast_options(socket_timeout_s),
            )
            self.redis = aioredis.Redis(connection_pool=pool)
            if lean_scripts:
                # Same deadline as redis-py's socket timeout; no pool: it pipelines callers
                # over one connection.
                self.scripts = ScriptClient.from_url(redis_url, socket_timeout_s=socket_timeout_s)

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None else "memory"

    async def check(self) -> dict[str, Any]:
        if self.redis is None:
            return {"ok": True, "backend": "memory"}
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=1.0)
        except (TimeoutError, RedisError, OSError) as exc:
            return {"ok": False, "backend": "redis", "error": type(exc).__name__}
        return {
            "ok": True,
            "backend": "redis",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    async def aclose(self) -> None:
        if self.scripts is not None:
            await self.scripts.aclose()
        if self.redis is not None:
            await self.redis.aclose()
