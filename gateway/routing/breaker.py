"""Circuit breakers per deployment (and per replica of one), fed by the pipeline's outcomes.

Passive: nothing is polled. Consecutive failures or an error rate over a window open a breaker
for a cooldown; then one request at a time goes through as a probe (half-open) and its success
closes it. An upstream 429 opens it for exactly its Retry-After. The state machine itself is
:class:`gateway.providers.balancer.CircuitBreaker`, which the provider's replica balancer also uses.

Breakers are local to a gateway process: each one sees its own failures within a few requests,
and sharing them would add a Redis round trip for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.providers.balancer import CLOSED, BreakerConfig, CircuitBreaker

Key = str | tuple[str, str]


class Breakers:
    """All breakers of one gateway process, created on first use. Times are monotonic seconds."""

    def __init__(
        self, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._breakers: dict[Key, CircuitBreaker] = {}

    def _get(self, deployment: str, replica: str | None) -> CircuitBreaker:
        key: Key = deployment if replica is None else (deployment, replica)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(self.config)
        return breaker

    def allow(self, deployment: str, replica: str | None = None, now: float | None = None) -> bool:
        """May a request go to ``deployment`` now? Takes the probe slot when half-open.

        Call it right before calling the upstream; a False means skip to the next attempt.
        """
        key: Key = deployment if replica is None else (deployment, replica)
        breaker = self._breakers.get(key)
        if breaker is None or breaker.state == CLOSED:
            return True
        return breaker.allow(self._clock() if now is None else now)

    def success(
        self, deployment: str, replica: str | None = None, now: float | None = None
    ) -> None:
        self._get(deployment, replica).success(self._clock() if now is None else now)

    def failure(
        self,
        deployment: str,
        replica: str | None = None,
        now: float | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """A connect error, timeout, 5xx, 429 or broken stream (not a client's 4xx)."""
        self._get(deployment, replica).failure(self._clock() if now is None else now, retry_after_s)

    def state(self, deployment: str, replica: str | None = None, now: float | None = None) -> str:
        """``closed``, ``open`` or ``half_open`` (an open breaker past its cooldown)."""
        key: Key = deployment if replica is None else (deployment, replica)
        breaker = self._breakers.get(key)
        if breaker is None or breaker.state == CLOSED:
            return CLOSED
        return breaker.current(self._clock() if now is None else now)

    def retry_after_s(self, deployment: str, now: float | None = None) -> float:
        """Seconds until ``deployment`` may be probed again (0 when it may be tried now)."""
        breaker = self._breakers.get(deployment)
        if breaker is None:
            return 0.0
        return breaker.retry_after_s(self._clock() if now is None else now)

    def snapshot(
        self, deployment: str, replica: str | None = None, now: float | None = None
    ) -> dict[str, Any]:
        key: Key = deployment if replica is None else (deployment, replica)
        breaker = self._breakers.get(key)
        now = self._clock() if now is None else now
        if breaker is None:
            return {"state": CLOSED, "retry_after_s": 0.0, "consecutive_failures": 0}
        return breaker.snapshot(now)
