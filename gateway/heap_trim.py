"""Keeping the C heap small: big tables loaded outside it, free pages given back now and then.

glibc's malloc keeps the pages of freed blocks for later allocations, so after a burst the
process stays at its high-water mark: big prompts (each one's body, parsed text and JSON for the
upstream are a few hundred KB apiece) or an overload that queued thousands of requests.
:class:`HeapTrimmer` calls ``malloc_trim(0)`` every few seconds, which hands every free page
back, in the middle of the heap too: ~10 µs when there is nothing to give, a few ms for tens of
MB (in a worker thread, so the event loop does not wait for it).

glibc also raises the size from which it maps a block on its own (``M_MMAP_THRESHOLD``) to the
largest such block freed so far. Loading a tokenizer frees big tables early, so the ones after
land in the heap among objects that live as long as the process, and leave holes no trim can
give back. :func:`map_blocks_from` fixes that size: glibc's initial 128 KB while the tokenizers
load, then, while serving, the 32 MB its own adjustment would end at. Not 128 KB (nor 1 MB) for
good: a 100k-token prompt's buffers would then come from fresh, zeroed pages every time.

Measured with the bench on 2026-12-06 (sections bigprompt, throughput up to 4,000 req/s and a
30-second soak at 1,900 req/s; RSS idle / after the soak, MB; the p99 that 100k-token prompts
add to other requests, ms; two runs each):

==========================================  ==============  ==============  ============
variant                                     idle            after soak      p99 added
==========================================  ==============  ==============  ============
glibc's defaults                            141.3 / 141.4   151.7 / 153.3   1.26 / 1.15
trimmed every 10 s                          141.2 / 141.2   149.2 / 150.9   1.53 / 1.50
mapped from 1 MB for good, trimmed          137.1 / 136.8   142.8 / 144.7   2.14 / 2.69
mapped from 128 KB while loading, trimmed   137.0 / 137.1   145.5 / 140.0   1.39 / 1.27
==========================================  ==============  ==============  ============

(Mapped from 128 KB for good, without the trims: a 100k-token request took 3.5 ms instead of 2.0
at p50, and added 2.7-2.8 ms to others' p99 instead of 1.2.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gateway.tasks import cancel_and_wait

__all__ = [
    "LOADING_MAPS_FROM",
    "SERVING_MAPS_FROM",
    "HeapTrimmer",
    "map_blocks_from",
    "release_free_memory",
]

# While the tokenizers load: glibc's initial size, before its adjustment raises it.
LOADING_MAPS_FROM = 128 * 1024
# While serving: the most glibc's own adjustment would ever raise it to (on 64-bit).
SERVING_MAPS_FROM = 32 * 1024 * 1024
# mallopt's parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc(name: str) -> Callable[..., int] | None:
    """The C library's function ``name``, or None where it has none (glibc's extensions are
    missing on musl and macOS)."""
    import ctypes  # here: only a serving process needs it, and the CLI's commands do not

    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    return function


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc); False where there is no
    ``malloc_trim``, which leaves it to the allocator."""
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def map_blocks_from(size: int) -> bool:
    """From now on glibc maps every block of ``size`` bytes or more on its own, and gives the
    top of its heap back once ``2 * size`` is free there (the ratio its own adjustment keeps);
    False where there is no ``mallopt`` or it refused."""
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, size)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * size))


class HeapTrimmer:
    """Calls ``trim`` every ``interval_s`` seconds in a worker thread, from :meth:`start` until
    :meth:`aclose`. An exception from ``trim`` is ignored: giving memory back is best effort,
    and the next interval tries again."""

    def __init__(self, interval_s: float, trim: Callable[[], object] = release_free_memory) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._interval_s = interval_s
        self._trim = trim
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # trims finished (for tests and debugging)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heap-trim")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._trim)
            self.runs += 1
