"""cancel_and_wait: the task is cancelled and finished when it returns."""

from __future__ import annotations

import asyncio

from gateway.tasks import cancel_and_wait


async def test_it_cancels_and_waits_for_the_task() -> None:
    cleaned: list[bool] = []

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)  # cleanup that takes a turn of the loop
            cleaned.append(True)

    task = asyncio.get_running_loop().create_task(work())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()
    assert cleaned == [True]


async def test_no_task_is_nothing_to_do() -> None:
    await cancel_and_wait(None)
