"""The load tester against a small local aiohttp server that misbehaves on request.

The server's behaviour is picked by the request's ``model``; it also records how many requests
it had in flight at once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from gateway.loadgen import BenchConfig, Distribution, Runner, summarize
from gateway.loadgen.client import Client, Sample


@dataclass
class ServerState:
    active: int = 0
    max_active: int = 0
    calls: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


STATE = web.AppKey("state", ServerState)


def chunk(content: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    body: dict[str, object] = {"object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.json()
    mode, n = body["model"], body.get("max_tokens", 4)
    state.calls += 1
    state.active += 1
    state.max_active = max(state.max_active, state.active)
    try:
        if mode == "error":
            error = {"error": {"message": "over budget", "type": "x", "code": "insufficient_quota"}}
            return web.json_response(error, status=429)
        if mode == "plain-error":
            return web.Response(status=502, text="bad gateway")
        if mode == "json":
            usage = {"prompt_tokens": 12, "completion_tokens": n}
            return web.json_response({"choices": [], "usage": usage})
        if mode == "sleep":
            await asyncio.sleep(float(body.get("seconds", 30)))
            return web.json_response({"choices": [], "usage": {"completion_tokens": 1}})
        if mode == "serial":  # one at a time, 100 ms each
            async with state.lock:
                await asyncio.sleep(0.1)
            return web.json_response({"choices": [], "usage": {"completion_tokens": 1}})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n')
        await response.write(b": keep-alive comment\n\n")
        for i in range(n):
            await asyncio.sleep(0.005)
            await response.write(chunk(f" w{i}"))
            if mode == "midstream":
                await response.write(b'data: {"error":{"message":"upstream broke"}}\n\n')
                return response
            if mode == "cut":
                return response
        if mode != "no-usage":
            await response.write(chunk(usage={"prompt_tokens": 12, "completion_tokens": n}))
        await response.write(b"data: [DONE]\n\n")
        return response
    finally:
        state.active -= 1


@dataclass
class Server:
    url: str
    state: ServerState


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    app = web.Application()
    state = ServerState()
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield Server(f"http://127.0.0.1:{port}/v1", state)
    finally:
        await runner.cleanup()


async def call(
    url: str, model: str, *, stream: bool = True, timeout_s: float = 30, **extra: object
) -> Sample:
    body = orjson.dumps({"model": model, "max_tokens": 5, **extra})
    async with Client(
        url + "/chat/completions", "sk-x", stream=stream, timeout_s=timeout_s, max_connections=4
    ) as client:
        return await client.send(Sample(0, 0.0, False), body)


async def test_stream_with_usage(server: Server) -> None:
    s = await call(server.url, "stream")
    assert s.error is None
    assert (s.output_tokens, s.prompt_tokens) == (5, 12)
    assert s.first_token is not None and s.last_token is not None
    assert s.sent <= s.first_token <= s.last_token <= s.end
    assert s.tpot_s is not None and s.tpot_s > 0


async def test_stream_without_usage_counts_chunks(server: Server) -> None:
    s = await call(server.url, "no-usage")
    assert s.error is None and s.output_tokens == 5 and s.prompt_tokens is None


async def test_json_answer(server: Server) -> None:
    s = await call(server.url, "json", stream=False)
    assert s.error is None and s.output_tokens == 5 and s.prompt_tokens == 12
    assert s.first_token is not None and s.last_token is None and s.tpot_s is None


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("error", "http_429:insufficient_quota"),
        ("plain-error", "http_502"),
        ("midstream", "stream_error"),
        ("cut", "incomplete_stream"),
    ],
)
async def test_errors_by_type(server: Server, model: str, error: str) -> None:
    assert (await call(server.url, model)).error == error


async def test_timeout_and_refused_connection(server: Server) -> None:
    s = await call(server.url, "sleep", stream=False, timeout_s=0.2, seconds=5)
    assert s.error == "timeout"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    assert (await call(f"http://127.0.0.1:{port}/v1", "json")).error == "connect_error"


async def test_open_loop_counts_latency_from_the_schedule(server: Server) -> None:
    """The coordinated-omission check: a server that serves one request per 100 ms, offered
    20 requests/s through one connection. Each request is sent on time and waits; its latency
    must include the wait. Served one at a time, the k-th to finish ends no earlier than
    (k + 1) x 100 ms after the start, whichever request it is (the connection pool does not
    promise first come, first served), and the requests were scheduled at k x 50 ms, so the
    latencies add up to at least 3.6 - 1.4 = 2.2 s. A tool that started the clock at the send
    would report ~100 ms for each, 0.8 s in all."""
    config = BenchConfig(
        server.url,
        model="serial",
        rate=20,
        arrival="uniform",
        requests=8,
        stream=False,
        max_connections=1,
    )
    result = await Runner(config).run()
    samples = result.samples
    latencies = [s.latency_s for s in samples]
    assert [s.error for s in samples] == [None] * 8
    assert all(s.latency_s == s.end - s.scheduled for s in samples)  # counted from the schedule
    start = min(s.scheduled for s in samples)
    for k, end in enumerate(sorted(s.end - start for s in samples)):
        assert end >= 0.1 * (k + 1) - 0.01, (k, latencies)  # 10 ms of slack for a busy machine
    assert sum(latencies) >= 2.2 - 0.08, latencies
    report = summarize(config, result)
    assert report["latency_ms"]["max"] >= 440
    print("latencies (ms):", [round(x * 1000) for x in latencies])


async def test_closed_loop_keeps_concurrency(server: Server) -> None:
    config = BenchConfig(
        server.url,
        model="stream",
        concurrency=3,
        requests=12,
        output_tokens=Distribution.parse("8"),
    )
    result = await Runner(config).run()
    assert len(result.samples) == 12 and all(s.ok for s in result.samples)
    assert server.state.max_active == 3
    assert server.state.calls == 12
    assert all(s.output_tokens == 8 for s in result.samples)


async def test_warmup_is_sent_but_not_reported(server: Server) -> None:
    config = BenchConfig(
        server.url, model="json", rate=40, arrival="uniform", requests=5, warmup_s=0.3, stream=False
    )
    result = await Runner(config).run()
    assert len(result.samples) == 5
    assert all(s.scheduled >= result.started for s in result.samples)
    assert server.state.calls == 5 + 12  # 0.3 s of warm-up at 40 requests/s: 12 requests


async def until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_stop_ends_the_run_early(server: Server) -> None:
    config = BenchConfig(server.url, model="json", rate=20, duration_s=60, stream=False)
    runner = Runner(config)
    task = asyncio.create_task(runner.run())
    await until(lambda: runner.progress().done >= 3)
    runner.stop()
    result = await asyncio.wait_for(task, 10)
    assert result.interrupted
    assert 3 <= len(result.samples) < 60 * 20
    assert all(s.ok for s in result.samples)


async def test_abort_cancels_requests_in_flight(server: Server) -> None:
    config = BenchConfig(server.url, model="sleep", concurrency=2, requests=4, stream=False)
    runner = Runner(config)
    task = asyncio.create_task(runner.run())
    await until(lambda: runner.progress().in_flight >= 2)
    runner.abort()
    result = await asyncio.wait_for(task, 10)
    assert result.interrupted and result.samples == []
