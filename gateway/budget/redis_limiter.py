"""The limiter over Redis (standalone or Cluster): each operation is one EVALSHA.

Scripts are registered once (``register_script``): they run by SHA and are loaded again by
themselves after a Redis restart or failover (``NOSCRIPT``). They are registered on redis-py's
client, or on a leaner ``scripts`` runner when one is given (the gateway passes one for a
standalone Redis: see :mod:`gateway.redis_scripts`); either way the failures below apply.

When Redis does not answer, every operation raises :class:`BudgetUnavailable` at once (bounded by
the client's socket timeouts: configure them short, and without redis-py's default retries):

* a failure opens a short breaker: for ``probe_interval_s`` calls fail without touching Redis,
  so a Redis that hangs costs one timeout per interval, not one per request;
* the first call after the interval tries Redis again: recovery needs no restart;
* the outage is logged once per ``log_interval_s`` (with how many calls failed meanwhile), and
  once more when Redis answers again; :meth:`status` reports it for /readyz.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from importlib import resources
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.budget.limiter import Arg, BudgetUnavailable, Limiter

log = logging.getLogger("tollgate.budget")

_SCRIPTS = ("admit", "settle", "extend", "read")
_WITH_HELPERS = frozenset({"admit", "extend", "read"})
_UNAVAILABLE = "The budget store is unavailable; try again shortly."

RedisClient = aioredis.Redis | aioredis.RedisCluster


class Script(Protocol):
    """A registered script: ``await script(keys, args)`` runs it (redis-py's AsyncScript is one)."""

    def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Awaitable[Any]: ...


class ScriptRunner(Protocol):
    """What registers scripts: a redis-py client, or any runner with the same method."""

    def register_script(self, script: str) -> Script: ...


def fail_fast_options(timeout_s: float = 0.25) -> dict[str, Any]:
    """Client options that bound how long a call waits for a Redis that is down or hung.

    redis-py's defaults are 5 s timeouts and 10 retries with backoff (seconds per call when
    Redis is gone). These give one immediate retry on a broken connection (a pooled one after a
    Redis restart) and none on a timeout. Pass them to ``redis.asyncio.from_url(url, **...)``.
    """
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }


def script_source(name: str) -> str:
    """A script as registered: ``<name>.lua``, after the shared helpers (``_lib.lua``) when it
    uses them (defining them costs a few microseconds per call, so settle goes without)."""
    folder = resources.files("gateway.budget") / "lua"
    body = (folder / f"{name}.lua").read_text()
    if name in _WITH_HELPERS:
        return (folder / "_lib.lua").read_text() + "\n" + body
    return body


class RedisLimiter(Limiter):
    """Budgets and rate limits kept in Redis, shared by every gateway process that uses it."""

    backend = "redis"
    probes = True

    def __init__(
        self,
        redis: RedisClient,
        prefix: str = "tollgate:",
        *,
        probe_interval_s: float = 0.5,
        log_interval_s: float = 30.0,
        hold_margin_s: float = 30.0,
        late_settle_s: float = 3600.0,
        sweep_batch: int = 16,
        max_hold_s: float = 3600.0,
        scripts: ScriptRunner | None = None,
    ) -> None:
        """``scripts`` runs the Lua scripts instead of ``redis`` when given (a runner bound to
        the same Redis)."""
        super().__init__(
            prefix,
            hold_margin_s=hold_margin_s,
            late_settle_s=late_settle_s,
            sweep_batch=sweep_batch,
            max_hold_s=max_hold_s,
        )
        self.redis = redis
        self.probe_interval_s = probe_interval_s
        self.log_interval_s = log_interval_s
        runner: ScriptRunner = redis if scripts is None else scripts
        registered = {name: runner.register_script(script_source(name)) for name in _SCRIPTS}
        self._admit_script = registered["admit"]
        self._settle_script = registered["settle"]
        self._extend_script = registered["extend"]
        self._read_script = registered["read"]
        self._healthy = True
        self._last_error: str | None = None
        self._down_since = 0.0  # monotonic
        self._retry_at = 0.0  # monotonic: no call reaches Redis before this while unhealthy
        self._last_log = float("-inf")
        self._failures = 0  # failed calls since the last log line

    @property
    def healthy(self) -> bool:
        """False from a failed call until the next successful one."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        """The last failure (``ConnectionError: ...``), kept after recovery for diagnosis."""
        return self._last_error

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = {"ok": self._healthy, "backend": self.backend}
        if not self._healthy:
            found["error"] = self._last_error
            found["down_s"] = round(time.monotonic() - self._down_since, 3)
        return found

    async def _admit(self, keys: list[str], args: list[Arg]) -> list[bytes]:
        found = await self._call(self._admit_script, keys, args)
        if isinstance(found, str):  # a client made with decode_responses=True
            found = found.encode()
        values: list[bytes] = found.split(b",")
        return values

    async def _admit_probing(
        self, keys: list[str], args: list[Arg]
    ) -> tuple[bytes | None, list[bytes]]:
        value, found = await self._call(self._admit_script, keys, args)
        if isinstance(found, str):
            found = found.encode()
        if isinstance(value, str):
            value = value.encode()
        return (value or None), (found.split(b",") if found else [])

    async def _settle(self, keys: list[str], args: list[Arg]) -> int:
        return int(await self._call(self._settle_script, keys, args))

    async def _extend(self, keys: list[str], args: list[Arg]) -> int:
        return int(await self._call(self._extend_script, keys, args))

    async def _read(self, keys: list[str], args: list[Arg]) -> list[int]:
        found: list[int] = await self._call(self._read_script, keys, args)
        return found

    async def _call(self, script: Script, keys: list[str], args: list[Arg]) -> Any:
        if not self._healthy and time.monotonic() < self._retry_at:
            self._failures += 1
            raise BudgetUnavailable(_UNAVAILABLE)
        try:
            result = await script(keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise BudgetUnavailable(_UNAVAILABLE) from exc
        if not self._healthy:
            self._recovered()
        return result

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._healthy:
            self._healthy = False
            self._down_since = now
        self._last_error = f"{type(exc).__name__}: {exc}"[:300]
        self._retry_at = now + self.probe_interval_s
        self._failures += 1
        if now - self._last_log >= self.log_interval_s:
            log.warning(
                "budget store unreachable; applying each team's on_redis_down",
                extra={"fields": {"error": self._last_error, "failed_calls": self._failures}},
            )
            self._last_log = now
            self._failures = 0

    def _recovered(self) -> None:
        down_s = time.monotonic() - self._down_since
        log.warning(
            "budget store reachable again",
            extra={"fields": {"down_s": round(down_s, 3), "failed_calls": self._failures}},
        )
        self._healthy = True
        self._failures = 0
        self._last_log = float("-inf")
