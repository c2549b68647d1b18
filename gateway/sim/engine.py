"""The simulated model's behaviour, shared by the in-process upstream and the standalone server.

A call goes through :meth:`SimEngine.handle`: the body is validated (a bad one gives a 400 in the
OpenAI error envelope), ``error_rate`` decides whether it fails (a 500 before the first byte), then
it answers after ``ttft_ms`` (plus ``1 / tokens_per_s`` per further token) either as one JSON body
or as a :class:`SimStream` of SSE events shaped like OpenAI's (see ``gateway.sim.answers``).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field, fields

import orjson

from gateway.errors import InvalidRequest
from gateway.providers.base import Endpoint, Usage
from gateway.sim.answers import Generation, parse_request, sleep_at_least
from gateway.sim.config import SimConfig

__all__ = ["ERROR_BODY", "SimConfig", "SimEngine", "SimReply", "SimStats", "SimStream"]

ERROR_BODY = orjson.dumps(
    {
        "error": {
            "message": "simulated upstream failure",
            "type": "server_error",
            "param": None,
            "code": "sim_error",
        }
    }
)


@dataclass(slots=True)
class SimStats:
    """Call counters. ``cancelled`` counts calls whose client went away before the end."""

    calls: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # simulated failures
    bad_requests: int = 0
    in_flight: int = 0
    completed: int = 0
    cancelled: int = 0

    def reset(self) -> None:
        """Zero the counters; calls still running stay counted as in flight."""
        in_flight = self.in_flight
        for f in fields(self):
            setattr(self, f.name, {} if f.name == "by_endpoint" else 0)
        self.in_flight = in_flight

    def as_dict(self) -> dict[str, object]:
        """The counters as a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class SimReply:
    """A complete answer: a JSON body (also for the 400 and simulated 500 errors)."""

    status: int
    body: bytes
    usage: Usage | None


class SimStream:
    """An answer being streamed: iterate for SSE events; ``aclose`` stops the generation.

    Closing it before the last event counts the call as cancelled, as a client disconnect does.
    :meth:`next_burst` hands out every event due at once, for a server to write together.
    """

    def __init__(
        self, bursts: AsyncGenerator[list[bytes], None], stats: SimStats, replica: str
    ) -> None:
        self.replica = replica
        self.cancelled = False
        self.finished = False
        self._bursts = bursts
        self._pending: deque[bytes] = deque()
        self._stats = stats
        stats.in_flight += 1

    def __aiter__(self) -> SimStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._pending:
            self._pending.extend(await self.next_burst())
        return self._pending.popleft()

    async def next_burst(self) -> list[bytes]:
        """The events due now (waiting until some are); ``StopAsyncIteration`` at the end."""
        if self._pending:
            burst = list(self._pending)
            self._pending.clear()
            return burst
        if self.finished:
            raise StopAsyncIteration
        try:
            return await anext(self._bursts)
        except StopAsyncIteration:
            self._finish(cancelled=False)
            raise

    async def aclose(self) -> None:
        """Stop generating; counts as cancelled unless every event was already read."""
        if not self.finished:
            self._finish(cancelled=True)
        self._pending.clear()
        await self._bursts.aclose()

    def _finish(self, *, cancelled: bool) -> None:
        self.finished = True
        self.cancelled = cancelled
        self._stats.in_flight -= 1
        if cancelled:
            self._stats.cancelled += 1
        else:
            self._stats.completed += 1


class SimEngine:
    """One simulated model: its (replaceable) config, its error draws and its counters."""

    def __init__(self, config: SimConfig | None = None, replica: str = "sim") -> None:
        self.config = config or SimConfig()
        self.replica = replica
        self.stats = SimStats()
        self._rng = random.Random(self.config.seed)

    def configure(self, changes: Mapping[str, object]) -> SimConfig:
        """Apply ``changes`` (validated; :class:`InvalidRequest` otherwise) to later calls."""
        config = self.config.with_changes(changes)
        if "seed" in changes:
            self._rng.seed(config.seed)
        self.config = config
        return config

    def _fails(self, config: SimConfig) -> bool:
        return config.error_rate > 0 and self._rng.random() < config.error_rate

    async def handle(
        self, endpoint: Endpoint, body: object, *, stream: bool | None = None
    ) -> SimReply | SimStream:
        """Answer one call: ``body`` is JSON, raw or parsed; ``stream`` overrides its flag."""
        stats = self.stats
        stats.calls += 1
        stats.by_endpoint[endpoint.value] = stats.by_endpoint.get(endpoint.value, 0) + 1
        config = self.config  # a config change applies to later calls, not this one
        try:
            job = await parse_request(endpoint, body, config, stream=stream)
        except InvalidRequest as exc:
            stats.bad_requests += 1
            return SimReply(exc.status, exc.body(), None)
        if self._fails(config):
            stats.errors += 1
            return SimReply(500, ERROR_BODY, None)
        if isinstance(job, Generation) and job.stream:
            return SimStream(job.bursts(config), stats, self.replica)
        stats.in_flight += 1
        try:
            delay = job.latency_s(config)
            if delay > 0:
                await sleep_at_least(delay)
        except asyncio.CancelledError:
            stats.cancelled += 1
            raise
        finally:
            stats.in_flight -= 1
        stats.completed += 1
        return SimReply(200, job.render(), job.usage)
