"""An open-loop load generator: requests leave on a fixed schedule, whatever the server does.

A closed loop (wrk, or N clients each waiting for its answer) slows down with the server it
measures and so hides queueing ("coordinated omission"). Here request ``i`` is due at
``start + i / rate``; when every connection is busy it waits in a queue, and its latency is
counted from the time it was *due*, so a slow server shows up as latency, not as fewer requests.

The schedule is uniform (as wrk2's). The dispatcher sleeps between batches, and uvloop's timers
have millisecond resolution, so above 1,000 requests/s requests leave in small bursts each
millisecond; ``lag_ms`` reports how late the dispatcher sent them. The harness checks that the
generator keeps up by running the same rate against the stub first (``bench.load``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bench.client import Connection, Exchange, Options, Target, connect
from bench.stats import Summary, summarize

# Below this, sleeping costs more than it saves: uvloop's timers round to the millisecond.
_MIN_SLEEP_S = 0.001


def total_requests(rate: float, duration_s: float) -> int:
    """How many requests a step at ``rate`` for ``duration_s`` sends (at least one)."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    return max(1, round(rate * duration_s))


def due_count(elapsed_s: float, rate: float, total: int) -> int:
    """How many of ``total`` requests are due ``elapsed_s`` after the start (the first at 0)."""
    if elapsed_s < 0:
        return 0
    return min(total, math.floor(elapsed_s * rate) + 1)


def due_at(index: int, rate: float) -> float:
    """Seconds after the start at which request ``index`` is due."""
    return index / rate


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step: ``rate`` requests/s offered for ``duration_s`` to one target."""

    target: str
    offered_rps: float
    duration_s: float
    planned: int
    sent: int
    ok: int  # HTTP 200
    errors: int  # any other status, or a broken connection
    unfinished: int  # still queued or in flight when the step gave up
    aborted: bool  # the queue outgrew the backlog limit: the target cannot keep up
    achieved_rps: float  # answers per second over the step (first due to last answer)
    latency_ms: Summary  # from when each request was due: includes waiting for a connection
    service_ms: Summary  # from when it was written to the socket
    lag_ms: Summary  # how late the dispatcher was for each request (the generator's own delay)
    connections: int  # connections the step ended up using
    statuses: dict[int, int]

    @property
    def clean(self) -> bool:
        """Every planned request answered 200, none abandoned."""
        return (
            not self.aborted
            and self.errors == 0
            and self.unfinished == 0
            and (self.ok == self.planned)
        )


class Pool:
    """Keep-alive connections to one target, opened on demand up to ``max_connections``."""

    def __init__(self, target: Target, max_connections: int = 256) -> None:
        self.target = target
        self.max_connections = max_connections
        self.idle: list[Connection] = []
        self.all: set[Connection] = set()
        self.pending: deque[tuple[bytes, Exchange]] = deque()
        self.connecting = 0
        self.on_done: Callable[[Exchange], None] = lambda _exchange: None
        self._tasks: set[asyncio.Task[None]] = set()

    async def warm(self, count: int) -> None:
        """Open ``count`` connections now, so a step does not start by connecting."""
        while len(self.all) < min(count, self.max_connections):
            conn = await connect(self.target, Options(), self._finished)
            self.all.add(conn)
            self.idle.append(conn)

    def submit(self, payload: bytes, exchange: Exchange) -> None:
        """Send now on an idle connection, or queue (opening a connection if allowed)."""
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is None or conn.transport.is_closing():
                # The server closed it while idle (keep-alive timeout): not a failed request.
                self.all.discard(conn)
                continue
            conn.send(payload, exchange)
            return
        self.pending.append((payload, exchange))
        if len(self.all) + self.connecting < self.max_connections and (
            len(self.pending) > self.connecting
        ):
            self.connecting += 1
            task = asyncio.ensure_future(self._open())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self) -> None:
        try:
            conn = await connect(self.target, Options(), self._finished)
        except OSError:
            return
        finally:
            self.connecting -= 1
        self.all.add(conn)
        self._next(conn)

    def _finished(self, conn: Connection, exchange: Exchange) -> None:
        if exchange.status < 0:
            self.all.discard(conn)
            self.on_done(exchange)
            return
        self.on_done(exchange)
        self._next(conn)

    def _next(self, conn: Connection) -> None:
        if self.pending:
            payload, exchange = self.pending.popleft()
            conn.send(payload, exchange)
        else:
            self.idle.append(conn)

    def abandon(self) -> int:
        """Drop the queue and close busy connections; returns how many requests that lost."""
        lost = len(self.pending)
        self.pending.clear()
        for conn in list(self.all):
            if conn.busy:
                conn.on_done = None  # its failure is not an answer
                conn.close()
                self.all.discard(conn)
                lost += 1
        self.idle = [conn for conn in self.idle if conn in self.all]
        return lost

    async def aclose(self) -> None:
        """Close every connection."""
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.all):
            conn.close()
        closing = [conn.closed for conn in self.all]
        self.all.clear()
        self.idle.clear()
        if closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*closing), 5)


async def run_step(
    pool: Pool,
    make_body: Callable[[], bytes],
    rate: float,
    duration_s: float,
    *,
    drain_s: float = 5.0,
    backlog_s: float = 1.0,
) -> StepResult:
    """Offer ``rate`` requests/s for ``duration_s`` through ``pool``; summarise what happened.

    The step gives up early (``aborted``) once more than ``backlog_s`` seconds' worth of
    requests wait for a connection: past that point the target is saturated and waiting longer
    only grows a queue.
    """
    target = pool.target
    planned = total_requests(rate, duration_s)
    backlog_limit = max(16, int(rate * backlog_s))
    latency: list[float] = []
    service: list[float] = []
    lag: list[float] = []
    statuses: dict[int, int] = {}
    outstanding = 0
    last_done = 0.0
    all_done = asyncio.Event()
    dispatching = True

    def on_done(exchange: Exchange) -> None:
        nonlocal outstanding, last_done
        outstanding -= 1
        last_done = exchange.done
        statuses[exchange.status] = statuses.get(exchange.status, 0) + 1
        latency.append(exchange.done - exchange.scheduled)
        service.append(exchange.done - exchange.sent)
        if outstanding == 0 and not dispatching:
            all_done.set()

    pool.on_done = on_done
    start = time.perf_counter() + 0.005
    sent = 0
    aborted = False
    try:
        while sent < planned:
            now = time.perf_counter()
            due = due_count(now - start, rate, planned)
            while sent < due:
                scheduled = start + sent / rate
                lag.append(now - scheduled)
                outstanding += 1
                pool.submit(target.request(make_body()), Exchange(sent, scheduled))
                sent += 1
            if len(pool.pending) > backlog_limit:
                aborted = True
                break
            if sent < planned:
                wait = start + sent / rate - time.perf_counter()
                await asyncio.sleep(max(wait, _MIN_SLEEP_S))
        dispatching = False
        if outstanding == 0:
            all_done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), 0.5 if aborted else drain_s)
    finally:
        dispatching = False
        unfinished = pool.abandon() if outstanding else 0
        pool.on_done = lambda _exchange: None
    ok = statuses.get(200, 0)
    answered = sum(statuses.values())
    span = (last_done - start) if answered else math.nan
    return StepResult(
        target=target.name,
        offered_rps=rate,
        duration_s=duration_s,
        planned=planned,
        sent=sent,
        ok=ok,
        errors=answered - ok,
        unfinished=unfinished + (planned - sent),
        aborted=aborted,
        achieved_rps=answered / span if span and span > 0 else math.nan,
        latency_ms=summarize(x * 1000 for x in latency),
        service_ms=summarize(x * 1000 for x in service),
        lag_ms=summarize(x * 1000 for x in lag),
        connections=len(pool.all),
        statuses=statuses,
    )
