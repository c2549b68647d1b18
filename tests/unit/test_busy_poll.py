"""Busy polling: the loop keeps polling for a window after work, then sleeps; the serving
protocol arms the poller the app's lifespan made, on a real uvicorn server and event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import uvloop

from gateway.app import create_app
from gateway.busy_poll import STATE_KEY, WORK_S, BusyPoll
from gateway.settings import Settings
from tests.support.uvicorn_server import uvicorn_server

DEMO = Path(__file__).resolve().parents[2] / "policies" / "demo.yaml"


async def until_idle(poller: BusyPoll, limit_s: float = 2.0) -> None:
    deadline = time.monotonic() + limit_s
    while poller.polling:
        assert time.monotonic() < deadline, "the poller never stopped"
        await asyncio.sleep(0.001)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_window_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="window_s"):
            BusyPoll(loop, 0)
    finally:
        loop.close()


async def test_armed_it_polls_then_stops_by_itself() -> None:
    poller = BusyPoll(asyncio.get_running_loop(), 0.002)
    assert not poller.polling
    poller.arm()
    assert poller.polling
    await until_idle(poller)
    assert poller.polls > 0
    polls = poller.polls
    await asyncio.sleep(0.01)  # stopped means stopped: no callback left in the loop
    assert poller.polls == polls
    poller.arm()  # and it starts again
    assert poller.polling
    await until_idle(poller)


async def test_work_in_the_loop_keeps_it_polling_past_the_window() -> None:
    loop = asyncio.get_running_loop()
    poller = BusyPoll(loop, 0.002)
    done = loop.create_future()
    seen: list[bool] = []

    def work(left: int) -> None:
        busy(20 * WORK_S)  # each step is an iteration with work in it
        seen.append(poller.polling)
        if left:
            loop.call_soon(work, left - 1)
        else:
            done.set_result(None)

    poller.arm()
    loop.call_soon(work, 20)  # ~8 ms of work, four windows long
    await done
    # Armed once, with a 2 ms window, before 8 ms of work: only the work it saw kept it going.
    assert all(seen)
    await until_idle(poller)


async def test_close_stops_it_at_once() -> None:
    poller = BusyPoll(asyncio.get_running_loop(), 1.0)
    poller.arm()
    await asyncio.sleep(0)
    poller.close()
    assert not poller.polling
    polls = poller.polls
    await asyncio.sleep(0.005)
    assert poller.polls == polls


def serve_app(busy_poll_us: int | None, tmp_path: Path) -> tuple[BusyPoll | None, int]:
    """``create_app`` on uvicorn with the gateway's protocol, lifespan on (embedded default):
    the poller its lifespan made, and how often it had polled after one request."""

    async def main() -> tuple[BusyPoll | None, int]:
        chosen = {} if busy_poll_us is None else {"busy_poll_us": busy_poll_us}
        settings = Settings(policy=DEMO, data_dir=tmp_path, access_log=False, **chosen)
        async with uvicorn_server(create_app(settings), lifespan="on") as (server, port):
            poller = server.lifespan.state.get(STATE_KEY)  # type: ignore[attr-defined]
            if poller is not None:
                await until_idle(poller)
            before = poller.polls if poller is not None else 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/healthz")).status_code == 200
            if poller is not None:
                await until_idle(poller)
        return poller, (poller.polls if poller is not None else 0) - before

    return uvloop.run(main())


def test_the_served_app_polls_after_a_request_with_the_configured_window(
    tmp_path: Path,
) -> None:
    poller, polls = serve_app(300, tmp_path)
    assert poller is not None
    assert poller.window_s == pytest.approx(300e-6)
    assert polls > 0


@pytest.mark.parametrize("busy_poll_us", [0, None], ids=["zero", "default"])
def test_zero_turns_it_off_and_it_is_off_by_default(
    busy_poll_us: int | None, tmp_path: Path
) -> None:
    poller, _ = serve_app(busy_poll_us, tmp_path)
    assert poller is None


def test_the_setting_is_bounded() -> None:
    with pytest.raises(ValueError, match="busy_poll_us"):
        Settings(busy_poll_us=-1)
