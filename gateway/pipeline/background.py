"""Work that must finish even though the request that started it was cancelled.

A client that disconnects cancels its request's task (for streams, level-triggered: every later
await in it is cancelled too), yet the budget must still be settled. Such work runs as a task of
its own, tracked here so that shutdown can wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("tollgate")


class Background:
    """A set of detached tasks, each logged if it fails, awaited by :meth:`drain`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error(
                "background work failed",
                extra={"fields": {"error": f"{type(error).__name__}: {error}"[:300]}},
            )

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) for every task still running."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
