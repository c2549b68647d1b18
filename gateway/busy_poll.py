"""Busy polling: after the event loop has had work, poll for more instead of sleeping at once.

A request's life at low concurrency is a chain of short waits: the client's bytes, then Redis's
reply (~0.1-0.2 ms), then the upstream's. Each time the loop finds nothing to do it blocks in
``epoll_wait``; on a VM whose idle vCPU halts (this machine's guest runs with
``haltpoll.guest_halt_poll_ns=0``), the wake-up goes through the hypervisor and the code then
runs on caches other tenants refilled. Polling for a short window first (what the guest kernel's
haltpoll, or ``SO_BUSY_POLL`` for NICs, does) catches the reply on a warm core.

:class:`BusyPoll` keeps a callback in the loop's ready queue for ``window_s`` after the last
sign of work, so the loop polls with a zero timeout instead of blocking. Work is seen from the
loop's own pace: an iteration that took longer than :data:`WORK_S` ran something besides this
callback (or the process was preempted), and restarts the window. It costs at most ``window_s``
of CPU per idle spell and nothing on an idle gateway: the serving protocol arms it when a
request arrives and when a response completes, and it stops once the window passes with no
work. Measured on 2026-12-03 (bench latency section, one request in flight, same host phase):
a 200 µs window took the added latency from 0.71 to 0.45 ms at p50 and 1.57 to 0.91 ms at p99.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["STATE_KEY", "WORK_S", "BusyPoll"]

# Where the serving protocol finds the poller: the ASGI lifespan state, which uvicorn hands to
# every connection's protocol (the app's lifespan puts it there).
STATE_KEY = "tollgate.busy_poll"
# An iteration of the loop with only this callback ready takes a few microseconds (a zero-timeout
# epoll_wait and the call); one that took longer had other work.
WORK_S = 20e-6


class BusyPoll:
    """Keeps ``loop`` polling for ``window_s`` after the last work; :meth:`arm` starts it."""

    __slots__ = ("_handle", "_last", "_loop", "_until", "polls", "window_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self._loop = loop
        self.window_s = window_s
        self._until = 0.0
        self._last = 0.0
        self._handle: asyncio.Handle | None = None
        # Loop iterations spent polling, for tests and curiosity.
        self.polls = 0

    @property
    def polling(self) -> bool:
        return self._handle is not None

    def arm(self) -> None:
        """Work just happened (a request arrived, a response left): poll for another window."""
        now = time.monotonic()
        self._until = now + self.window_s
        if self._handle is None:
            self._last = now
            self._handle = self._loop.call_soon(self._poll)

    def close(self) -> None:
        """Stop polling now (at shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _poll(self) -> None:
        now = time.monotonic()
        if now - self._last > WORK_S:
            self._until = now + self.window_s
        self._last = now
        if now < self._until:
            self.polls += 1
            self._handle = self._loop.call_soon(self._poll)
        else:
            self._handle = None
