"""The harness's stop switch: Ctrl-C or SIGTERM stops a run even if a measurement absorbs the
cancellation, and a second signal (or one outside the measurements) interrupts at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.interrupt import StopSwitch
from bench.sections import Run


def make_run(tmp_path: Path, *sections: str) -> Run:
    plan: Any = SimpleNamespace(sections=set(sections))
    doc = {"results": {}, "errors": {}}
    return Run(plan, None, None, tmp_path, doc, None, None)  # type: ignore[arg-type]


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


def test_outside_the_measurements_a_signal_interrupts_at_once() -> None:
    stop = StopSwitch()
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)
    assert stop.requested


async def test_the_first_signal_cancels_the_task_and_the_second_interrupts() -> None:
    stop = StopSwitch()
    task = asyncio.create_task(asyncio.sleep(10))
    stop.attach(task)  # type: ignore[arg-type]
    stop(signal.SIGTERM, None)
    assert stop.requested
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)


async def test_a_section_that_absorbs_the_cancellation_still_ends_the_run(
    tmp_path: Path, handlers: None
) -> None:
    run = make_run(tmp_path, "first", "second")
    ran: list[str] = []
    signal.signal(signal.SIGINT, run.stop)

    async def absorbing() -> dict[str, Any]:
        ran.append("first")
        # What a measurement cleaning up after itself can do by mistake.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return {}

    async def second() -> dict[str, Any]:
        ran.append("second")
        return {}

    async def measurements() -> None:
        task = asyncio.current_task()
        assert task is not None
        run.stop.attach(task)
        await run.section("first", absorbing)
        await run.section("second", second)

    task = asyncio.create_task(measurements())
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)  # a real signal, through the installed handler
    await asyncio.wait_for(task, 5)
    assert ran == ["first"]
    assert run.stop.requested


async def test_without_a_signal_every_section_runs(tmp_path: Path) -> None:
    run = make_run(tmp_path, "first", "second")
    ran: list[str] = []

    async def record(name: str) -> dict[str, Any]:
        ran.append(name)
        return {}

    await run.section("first", lambda: record("first"))
    await run.section("second", lambda: record("second"))
    assert ran == ["first", "second"]
    assert run.results == {"first": {}, "second": {}}
