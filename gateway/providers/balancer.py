"""Choosing a replica within a provider, and the circuit breaker both layers use.

:class:`Balancer` picks one of a provider's ``base_urls`` for each request:

* without an affinity key: the replica with the fewest requests in flight (ties rotate);
* with one (a hash of the system prompt): consistent hashing with bounded loads (Mirrokni,
  Thorup and Zadimoghaddam, 2018). The key maps to a point on a ring of virtual nodes; the request
  goes to the first replica clockwise whose load is under ``ceil(load_factor * (in_flight + 1) /
  replicas)``. Requests sharing a prefix therefore land on the replica whose KV cache holds it,
  until that replica carries more than its share, when they spill to the next one on the ring;
* replicas whose breaker is open are skipped, unless every replica's is (then the deployment-level
  breaker in ``gateway.routing`` decides whether to send at all);
* with ``max_in_flight``, a request that finds every replica full waits briefly for a slot
  (FIFO) and is shed with a retryable 503 when none frees, so the router fails over.

:class:`CircuitBreaker` lives here rather than in ``gateway.routing`` because providers sit below
routing: routing's per-deployment :class:`gateway.routing.breaker.Breakers` reuse it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.errors import UpstreamError

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

# A Retry-After longer than this is an upstream mistake, not a reason to stop for a day.
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When a breaker opens, and for how long.

    It opens after ``consecutive_failures`` failures in a row, or when at least ``min_requests``
    outcomes in the last ``window_s`` include ``error_rate`` or more failures. It stays open for
    ``cooldown_s`` (doubling after each failed probe, up to ``max_cooldown_s``), or for an upstream
    429's Retry-After, then lets one probe through (half-open): success closes it.
    """

    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    window_s: float = 10.0
    cooldown_s: float = 5.0
    max_cooldown_s: float = 60.0


class CircuitBreaker:
    """A passive breaker: outcomes are reported, nothing is polled. Times are monotonic seconds."""

    __slots__ = (
        "config",
        "consecutive",
        "cooldown_s",
        "opened_until",
        "probe_at",
        "state",
        "window_err",
        "window_ok",
        "window_prev_err",
        "window_prev_ok",
        "window_start",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state: str = CLOSED
        self.opened_until = 0.0
        self.cooldown_s = config.cooldown_s
        self.consecutive = 0
        self.probe_at: float | None = None
        self.window_start = 0.0
        self.window_ok = self.window_err = 0
        self.window_prev_ok = self.window_prev_err = 0

    def current(self, now: float) -> str:
        """The state as a client would see it: an open breaker past its cooldown is half-open."""
        if self.state == OPEN and now >= self.opened_until:
            return HALF_OPEN
        return self.state

    def available(self, now: float) -> bool:
        """Whether :meth:`allow` would say yes, without taking the half-open probe."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now >= self.opened_until
        return self._probe_expired(now)

    def allow(self, now: float) -> bool:
        """May a request go now? In half-open, only one probe at a time is let through."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now < self.opened_until:
                return False
            self.state = HALF_OPEN
        elif not self._probe_expired(now):
            return False
        self.probe_at = now
        return True

    def _probe_expired(self, now: float) -> bool:
        # A probe whose outcome never came back (a cancelled request) must not wedge the breaker.
        return self.probe_at is None or now - self.probe_at >= self.cooldown_s

    def success(self, now: float) -> None:
        self._count(now, ok=True)
        self.consecutive = 0
        if self.state == HALF_OPEN:
            self.state = CLOSED
            self.probe_at = None
            self.cooldown_s = self.config.cooldown_s
            self._reset_window(now)

    def failure(self, now: float, retry_after_s: float | None = None) -> None:
        """A failure; ``retry_after_s`` (an upstream 429's Retry-After) opens it for that long."""
        self._count(now, ok=False)
        self.consecutive += 1
        if retry_after_s is not None:
            self._open(now, min(max(retry_after_s, 0.0), MAX_RETRY_AFTER_S))
            return
        if self.state == HALF_OPEN:
            self.cooldown_s = min(self.cooldown_s * 2, self.config.max_cooldown_s)
            self._open(now, self.cooldown_s)
        elif self.state == CLOSED and self._tripped(now):
            self._open(now, self.cooldown_s)

    def retry_after_s(self, now: float) -> float:
        """Seconds until a probe may go (0 when closed or already half-open)."""
        return max(0.0, self.opened_until - now) if self.state == OPEN else 0.0

    def snapshot(self, now: float) -> dict[str, Any]:
        ok, err = self._window_counts(now)
        return {
            "state": self.current(now),
            "retry_after_s": round(self.retry_after_s(now), 3),
            "consecutive_failures": self.consecutive,
            "window_requests": round(ok + err, 1),
            "window_error_rate": round(err / (ok + err), 3) if ok + err else 0.0,
        }

    def _open(self, now: float, duration_s: float) -> None:
        self.state = OPEN
        self.opened_until = now + duration_s
        self.probe_at = None

    def _tripped(self, now: float) -> bool:
        config = self.config
        if self.consecutive >= config.consecutive_failures:
            return True
        ok, err = self._window_counts(now)
        total = ok + err
        return total >= config.min_requests and err >= config.error_rate * total

    def _count(self, now: float, *, ok: bool) -> None:
        elapsed = now - self.window_start
        if elapsed >= self.config.window_s:
            if elapsed >= 2 * self.config.window_s:
                self.window_prev_ok = self.window_prev_err = 0
            else:
                self.window_prev_ok, self.window_prev_err = self.window_ok, self.window_err
            self.window_ok = self.window_err = 0
            self.window_start = now
        if ok:
            self.window_ok += 1
        else:
            self.window_err += 1

    def _window_counts(self, now: float) -> tuple[float, float]:
        # Two fixed windows blended by overlap: a sliding window without keeping timestamps.
        elapsed = now - self.window_start
        if elapsed >= 2 * self.config.window_s:
            return 0.0, 0.0
        if elapsed >= self.config.window_s:
            share = 1.0 - (elapsed - self.config.window_s) / self.config.window_s
            return self.window_ok * share, self.window_err * share
        share = 1.0 - elapsed / self.config.window_s
        return (
            self.window_ok + self.window_prev_ok * share,
            self.window_err + self.window_prev_err * share,
        )

    def _reset_window(self, now: float) -> None:
        self.window_start = now
        self.window_ok = self.window_err = 0
        self.window_prev_ok = self.window_prev_err = 0


def hash64(text: str) -> int:
    """A stable 64-bit hash (Python's ``hash`` is salted per process; replicas must agree)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Balancer:
    """Replica choice for one provider: least outstanding requests, prefix affinity, breakers.

    ``acquire`` counts the request in flight on the replica it returns; every acquire must be
    matched by one ``release``. Outcomes go to ``success``/``failure`` (per-replica breakers).
    """

    def __init__(
        self,
        replicas: Sequence[str],
        *,
        max_in_flight: int | None = None,
        load_factor: float = 1.25,
        queue_timeout_s: float = 0.25,
        virtual_nodes: int = 64,
        breaker: BreakerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("a balancer needs at least one replica")
        if load_factor < 1.0:
            raise ValueError("load_factor must be at least 1")
        self.names = list(replicas)
        self.in_flight = [0] * len(replicas)
        self.max_in_flight = max_in_flight
        self.load_factor = load_factor
        self.queue_timeout_s = queue_timeout_s
        config = breaker or BreakerConfig()
        self.breakers = [CircuitBreaker(config) for _ in replicas]
        self._clock = clock
        self._rotation = 0
        self._total = 0
        points = sorted(
            (hash64(f"{name}#{vnode}"), index)
            for index, name in enumerate(replicas)
            for vnode in range(virtual_nodes)
        )
        self._ring_points = [point for point, _ in points]
        self._ring_owner = [owner for _, owner in points]
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Waiting requests beyond this are shed at once: a long queue only hides an overload.
        self._max_waiters = (max_in_flight or 0) * len(replicas)

    # --- choosing ------------------------------------------------------------------------------

    def choose(
        self,
        affinity_key: str | None = None,
        exclude: Collection[int] = (),
        now: float | None = None,
    ) -> int | None:
        """The replica for the next request, or None if every one left is full or excluded.

        Pure choice: nothing is counted (``acquire`` does that).
        """
        count = len(self.names)
        cap = self.max_in_flight
        in_flight = self.in_flight
        if count == 1:  # the common case (a cloud API): nothing to choose
            return 0 if 0 not in exclude and (cap is None or in_flight[0] < cap) else None
        now = self._clock() if now is None else now
        eligible = [
            index
            for index in range(count)
            if index not in exclude and (cap is None or in_flight[index] < cap)
        ]
        if not eligible:
            return None
        healthy = [index for index in eligible if self.breakers[index].available(now)]
        pool = healthy or eligible
        if len(pool) == 1:
            return pool[0]
        if affinity_key is not None:
            found = self._by_affinity(affinity_key, pool)
            if found is not None:
                return found
        return self._least_loaded(pool)

    def _least_loaded(self, pool: list[int]) -> int:
        in_flight = self.in_flight
        self._rotation = (self._rotation + 1) % len(self.names)
        start = self._rotation
        count = len(self.names)
        # Ties broken by a rotating start so equal replicas share the load evenly.
        return min(pool, key=lambda index: (in_flight[index], (index - start) % count))

    def _by_affinity(self, key: str, pool: list[int]) -> int | None:
        bound = math.ceil(self.load_factor * (self._total + 1) / len(pool))
        allowed = set(pool)
        points, owners = self._ring_points, self._ring_owner
        size = len(points)
        position = bisect.bisect_left(points, hash64(key))
        seen: set[int] = set()
        for step in range(size):
            owner = owners[(position + step) % size]
            if owner in seen:
                continue
            seen.add(owner)
            if owner in allowed and self.in_flight[owner] < bound:
                return owner
            if len(seen) == len(self.names):
                break
        return None

    # --- counting ------------------------------------------------------------------------------

    async def acquire(
        self, affinity_key: str | None = None, exclude: Collection[int] = ()
    ) -> int | None:
        """Take a slot on the chosen replica; None when every replica is excluded.

        When all are at ``max_in_flight`` it waits up to ``queue_timeout_s`` for one to free,
        then raises a retryable :class:`UpstreamError` (503, ``upstream_overloaded``).
        """
        if exclude and all(index in exclude for index in range(len(self.names))):
            return None
        index = self.choose(affinity_key, exclude)
        if index is None:
            index = await self._wait_for_slot(affinity_key, exclude)
        self.in_flight[index] += 1
        self._total += 1
        if self.breakers[index].state != CLOSED:
            self.breakers[index].allow(self._clock())
        return index

    async def _wait_for_slot(self, affinity_key: str | None, exclude: Collection[int]) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or len(self._waiters) >= self._max_waiters:
                raise UpstreamError(
                    f"every replica has {self.max_in_flight} requests in flight",
                    status=503,
                    code="upstream_overloaded",
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            index = self.choose(affinity_key, exclude)
            if index is not None:
                return index

    def release(self, index: int) -> None:
        """The request on ``index`` is over (answered, failed or cancelled)."""
        self.in_flight[index] -= 1
        self._total -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def success(self, index: int, now: float | None = None) -> None:
        self.breakers[index].success(self._clock() if now is None else now)

    def failure(
        self, index: int, now: float | None = None, retry_after_s: float | None = None
    ) -> None:
        self.breakers[index].failure(self._clock() if now is None else now, retry_after_s)

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        """Per replica: name, requests in flight, breaker state (for admin views)."""
        now = self._clock() if now is None else now
        return [
            {
                "replica": name,
                "in_flight": self.in_flight[index],
                **self.breakers[index].snapshot(now),
            }
            for index, name in enumerate(self.names)
        ]
