"""After an answer: the cache entry made once it has left, and the budget settled whatever
happens to the cache's part."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.budget import Charge, build_plan
from gateway.budget.memory_limiter import MemoryLimiter
from gateway.cache import PendingWrite, PromptCache
from gateway.cache.store import MemoryCacheStore
from gateway.pipeline.accounting import Hold
from gateway.pipeline.closing import settle_and_write
from gateway.policy.schema import Defaults, Team
from gateway.record import RequestRecord


def test_a_cache_entry_that_fails_to_be_made_still_leaves_the_budget_settled() -> None:
    async def main() -> None:
        limiter = MemoryLimiter()
        team = Team.model_validate({"budgets": [{"tokens": 1000, "window": "day"}]})
        plan = build_plan("t", team, Defaults())
        record = RequestRecord("req_2", time.perf_counter())
        hold = Hold(limiter, plan, record)
        await hold.reserve(Charge(300, 0), timeout_s=60)

        def keep() -> PendingWrite | None:
            raise RuntimeError("the entry could not be made")

        cache = PromptCache(MemoryCacheStore(), "test:")
        with pytest.raises(RuntimeError, match="could not be made"):
            await settle_and_write(hold, cache, Charge(120, 0), None, keep=keep)
        windows = await limiter.snapshot(plan)
        assert [(w.used, w.reserved) for w in windows] == [(120, 0)]

    asyncio.run(main())


def test_the_entry_is_made_after_the_answer_is_written() -> None:
    """Spawned as the answer is sent, the task lets the server's write (queued just after it)
    go first, then makes the entry."""

    async def main() -> None:
        order: list[str] = []
        record = RequestRecord("req_3", time.perf_counter())
        hold = Hold(MemoryLimiter(), build_plan("t", None, Defaults()), record)

        def keep() -> PendingWrite | None:
            order.append("entry made")
            return None

        loop = asyncio.get_running_loop()
        cache = PromptCache(MemoryCacheStore(), "test:")
        task = loop.create_task(settle_and_write(hold, cache, Charge(1, 0), None, keep=keep))
        loop.call_soon(order.append, "answer written")
        await task
        assert order == ["answer written", "entry made"]

    asyncio.run(main())
