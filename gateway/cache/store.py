"""Where entries live: Redis (shared by replicas) or this process (the embedded default).

Both stores have one interface, :class:`CacheStore`. Neither ever raises because of the backend: a
Redis that is down or slow makes every read a miss and every write a no-op, logged once per
:attr:`RedisCacheStore.log_interval_s`. After a failure the Redis store stops asking for
``retry_after_s``, so a dead Redis costs each request nothing rather than a connect timeout.

The Redis store also offers the cross-replica half of single flight (:meth:`claim`): one Lua call
that reads the entry and, on a miss, takes a short ``SET NX PX`` lock beside it, so the first
replica to miss calls upstream and the others poll the entry instead.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("tollgate.cache")

# KEYS[1] entry, KEYS[2] lock beside it. ARGV[1] lock token, ARGV[2] lock lifetime in ms.
# Returns {entry or false, 1 when this caller now holds the lock else 0}.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value then return {value, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 1} end
return {false, 0}
"""

# KEYS[1] entry (may be absent from the call: release only), KEYS[2] lock.
# ARGV[1] lock token, ARGV[2] entry (optional), ARGV[3] entry lifetime in ms.
# Writes the entry if given, then drops the lock if it is still ours. Returns 1.
_RELEASE = """
if ARGV[2] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

_DOWN = (RedisError, OSError, TimeoutError)


class CacheStore(Protocol):
    """Bytes by key with a lifetime. Never raises for the backend's sake."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryCacheStore:
    """An in-process LRU bounded by total bytes, each entry with its own expiry."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_now(self, key: str) -> bytes | None:
        """The entry, synchronously (the async :meth:`get` is this plus a coroutine)."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def put_now(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store synchronously; an entry bigger than the whole store is not kept."""
        if key in self._entries:
            self._drop(key)
        if ttl_s <= 0 or len(value) > self.max_bytes:
            return
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self.size += len(value)
        self._evict()

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.put_now(key, value, ttl_s)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= len(value)

    def _evict(self) -> None:
        entries = self._entries
        now = time.monotonic()
        while self.size > self.max_bytes and entries:
            # Least recently used first; expired entries go the same way when reached.
            _, (_, value) = entries.popitem(last=False)
            self.size -= len(value)
        # Bounded sweep of expired entries at the cold end, so dead entries do not pin memory.
        for _ in range(4):
            if not entries:
                break
            key = next(iter(entries))
            if entries[key][0] > now:
                break
            self._drop(key)


class RedisCacheStore:
    """Entries in Redis under keys the caller built (see ``gateway.cache.keys``)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        retry_after_s: float = 1.0,
        log_interval_s: float = 30.0,
    ) -> None:
        self.redis = redis
        self.retry_after_s = retry_after_s
        self.log_interval_s = log_interval_s
        self.errors = 0
        self._down_until = 0.0
        self._logged_at = float("-inf")
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    @property
    def available(self) -> bool:
        """False while a recent failure keeps the store from asking Redis."""
        return time.monotonic() >= self._down_until

    async def get(self, key: str) -> bytes | None:
        if not self.available:
            return None
        try:
            value = await self.redis.get(key)
        except _DOWN as exc:
            self._failed("get", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if not self.available or ttl_s <= 0:
            return
        try:
            await self.redis.set(key, value, px=max(1, int(ttl_s * 1000)))
        except _DOWN as exc:
            self._failed("put", exc)

    async def claim(
        self, key: str, lock: str, token: str, lock_s: float
    ) -> tuple[bytes | None, bool]:
        """Read ``key``; on a miss try to take ``lock`` for ``lock_s``. One round trip.

        Returns (entry, whether this caller holds the lock). Redis down: (None, True), i.e. go
        ahead alone.
        """
        if not self.available:
            return None, True
        try:
            value, held = await self._claim(keys=[key, lock], args=[token, _ms(lock_s)])
        except _DOWN as exc:
            self._failed("claim", exc)
            return None, True
        return (value or None), bool(held)

    async def release(
        self, key: str, lock: str, token: str, value: bytes | None = None, ttl_s: float = 0
    ) -> None:
        """Store ``value`` (if any) and drop ``lock`` if still ours. One round trip."""
        if not self.available:
            return
        args: list[bytes | str | int] = [token]
        if value is not None and ttl_s > 0:
            args += [value, _ms(ttl_s)]
        try:
            await self._release(keys=[key, lock], args=args)
        except _DOWN as exc:
            self._failed("release", exc)

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        self._down_until = now + self.retry_after_s
        if now - self._logged_at >= self.log_interval_s:
            self._logged_at = now
            log.warning(
                "cache skipped: redis unavailable",
                extra={
                    "fields": {
                        "operation": operation,
                        "error": type(exc).__name__,
                        "errors": self.errors,
                        "retry_after_s": self.retry_after_s,
                    }
                },
            )


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
