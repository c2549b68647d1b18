"""Ctrl-C and SIGTERM: stop a run at once, keep what it measured.

asyncio's own Ctrl-C handling cancels the main task once and counts on the cancellation to
reach the top. A measurement that awaits inside a ``finally`` or suppresses a
``CancelledError`` on its way out can absorb it, and the run then goes on to the next section
(seen on 2026-12-03: a Ctrl-C during the profile section ended that section, and the run went
on through wrk into the five-minute soak). Here the first signal both cancels the task and
records the request, so every later section is skipped even if the cancellation was absorbed;
a second signal raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import asyncio
from types import FrameType


class StopSwitch:
    """The run's stop request: install it as the SIGINT and SIGTERM handler."""

    def __init__(self) -> None:
        self.requested = False
        self._task: asyncio.Task[object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, task: asyncio.Task[object]) -> None:
        """The task a signal cancels: the one running the measurements."""
        self._task = task
        self._loop = task.get_loop()

    def detach(self) -> None:
        """The measurements are over: a signal now interrupts whatever runs (the write-up)."""
        self._task = self._loop = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        task, loop = self._task, self._loop
        if self.requested or task is None or loop is None or task.done():
            # A second signal, or one outside the measurements (the idle probe, the database
            # set-up): stop what runs now, as Python's default handler does.
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True
        # Thread-safe: the handler runs between bytecodes of the main thread, which may be
        # inside the event loop's own code. It also wakes a loop waiting in epoll.
        loop.call_soon_threadsafe(task.cancel)
