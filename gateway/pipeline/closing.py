"""After the response: charge the usage and put the answer in the cache.

Neither has to happen before the client has its answer: the settle only gives back what the hold
over-reserved, and identical requests get the answer from this process until its write lands
(see ``PromptCache.finish``). When the cache key is the team's, one Lua call does both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.budget import Charge, Fill
from gateway.cache import PendingWrite, PromptCache
from gateway.pipeline.accounting import Hold


async def settle_and_write(
    hold: Hold,
    cache: PromptCache,
    actual: Charge,
    pending: PendingWrite | None,
    *,
    keep: Callable[[], PendingWrite | None] | None = None,
) -> None:
    """Settle ``actual`` and write ``pending`` (or what ``keep`` makes: the cache entry, built
    here once the answer has left rather than before it)."""
    # Spawned while the answer is being sent, this task's first step would run before the
    # server's coalesced write of that answer (scheduled just after it): one turn of the loop
    # lets the answer leave first, and the settle's Redis write follows it.
    await asyncio.sleep(0)
    if keep is not None:
        try:
            pending = keep()
        except BaseException:
            await hold.settle(actual)  # the budget is settled whatever the cache's trouble
            raise
    if pending is None:
        await hold.settle(actual)
        return
    fill = None
    if pending.beside_budget and pending.token is not None:
        fill = Fill(pending.key, pending.lock, pending.token, pending.value, pending.ttl_ms)
    try:
        if not await hold.settle(actual, fill):
            await cache.write(pending)
    finally:
        cache.written(pending)
