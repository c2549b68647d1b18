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
work.

It is off unless ``TOLLGATE_BUSY_POLL_US`` is set, because it helps one traffic pattern and
hurts another. Measured on 2026-12-03 with a 200 µs window (bench, full policy, two alternating
runs with and without, 15:40-16:00 UTC):

* one request in flight, back to back: added latency p50 0.70 / 0.68 -> 0.46 / 0.47 ms, p99
  1.72 / 1.55 -> 1.48 / 1.25 ms; a fast stream's added TTFT 0.92 / 0.89 -> 0.66 / 0.71 ms;
* open loop at 1,000 req/s: added p50 0.72 / 0.63 -> 0.59 / 0.51 ms, CPU per request
  552 / 596 -> 640 / 669 µs; at 2,000 req/s no change either way;
* open loop at 250 req/s (a request every 4 ms): added p50 0.77 / 0.97 -> 1.10 / 1.29 ms and
  CPU per request 725 / 760 -> 1,005 / 1,115 µs. Yielding the CPU at every poll and polling only
  while a request is in flight (both tried) kept that regression.
* a paced stream's first token (the request path idle 100 ms before): no change.

So it suits clients that send their next request at once, on a core of the gateway's own; on
a shared core, or under a CPU quota that the polling would use up, leave it off.
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
