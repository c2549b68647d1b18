"""The open-loop generator: its schedule (pure) and its behaviour against the real stub.

The stub runs in the test's own event loop on a real socket; nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest

from bench.client import Exchange, Options, Target, connect
from bench.openloop import Pool, due_at, due_count, run_step, total_requests
from bench.stub import StubConfig, StubProtocol, StubStats

BODY = b'{"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'


def test_total_requests() -> None:
    assert total_requests(1000, 2.0) == 2000
    assert total_requests(0.1, 1.0) == 1  # at least one
    with pytest.raises(ValueError, match="positive"):
        total_requests(0, 1.0)


def test_due_count_follows_the_uniform_schedule() -> None:
    # At 100 req/s, one request is due every 10 ms, the first at once.
    assert due_count(-0.001, 100, 50) == 0
    assert due_count(0.0, 100, 50) == 1
    assert due_count(0.0099, 100, 50) == 1
    assert due_count(0.010, 100, 50) == 2
    assert due_count(0.255, 100, 50) == 26
    assert due_count(10.0, 100, 50) == 50  # never more than planned


def test_due_at_inverts_due_count() -> None:
    for index in range(0, 500, 7):
        when = due_at(index, 250.0)
        assert due_count(when + 1e-9, 250.0, 10_000) == index + 1


@pytest.fixture
def stub_stats() -> StubStats:
    return StubStats()


@pytest.fixture
async def stub(stub_stats: StubStats) -> AsyncIterator[Target]:
    loop = asyncio.get_running_loop()
    config = StubConfig(tokens=4, real_ttft_s=0.005, real_interval_s=0.001)
    server = await loop.create_server(lambda: StubProtocol(config, stub_stats), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Target("stub", "127.0.0.1", port, "/fast/v1/chat/completions", b"")
    finally:
        server.close()
        await server.wait_closed()


def _bodies() -> Iterator[bytes]:
    n = 0
    while True:
        n += 1
        yield b'{"model":"chat","messages":[{"role":"user","content":"%d"}]}' % n


async def test_a_step_sends_every_planned_request_and_counts_the_answers(
    stub: Target, stub_stats: StubStats
) -> None:
    pool = Pool(stub, max_connections=8)
    bodies = _bodies()
    try:
        result = await run_step(pool, lambda: next(bodies), rate=200, duration_s=0.25)
    finally:
        await pool.aclose()
    assert result.planned == 50
    assert result.sent == 50 and result.ok == 50
    assert result.errors == 0 and result.unfinished == 0 and not result.aborted
    assert result.clean
    assert result.statuses == {200: 50}
    assert result.latency_ms["n"] == 50
    # Latency counts from when a request was due, so it is never below the service time.
    assert result.latency_ms["p50"] >= result.service_ms["p50"] - 1e-9
    assert stub_stats.requests == 50
    assert 1 <= result.connections <= 8


async def test_errors_are_counted_not_hidden(stub: Target) -> None:
    missing = Target("stub", stub.host, stub.port, "/nowhere", b"")
    pool = Pool(missing, max_connections=4)
    try:
        result = await run_step(pool, lambda: BODY, rate=100, duration_s=0.1)
    finally:
        await pool.aclose()
    assert result.ok == 0
    assert result.errors == result.planned == 10
    assert result.statuses == {404: 10}
    assert not result.clean


async def test_a_connection_the_server_closed_while_idle_is_not_used(stub: Target) -> None:
    pool = Pool(stub, max_connections=4)
    try:
        await pool.warm(2)
        for conn in list(pool.idle):
            conn.close()  # as a server's keep-alive timeout would
        await asyncio.gather(*(conn.closed for conn in list(pool.all)))
        result = await run_step(pool, lambda: BODY, rate=100, duration_s=0.05)
    finally:
        await pool.aclose()
    assert result.clean, result.statuses


async def test_a_server_that_never_answers_is_abandoned_not_waited_for() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(Target("silent", "127.0.0.1", port, "/", b""), max_connections=2)
    try:
        result = await run_step(
            pool, lambda: BODY, rate=200, duration_s=0.5, drain_s=0.2, backlog_s=0.05
        )
    finally:
        await pool.aclose()
        release.set()
        server.close()
        await server.wait_closed()
    assert result.ok == 0
    # Two connections, each stuck on its first request, and the queue behind them overflowed.
    assert result.aborted
    assert result.sent < result.planned
    assert result.unfinished == result.planned
    assert not result.clean


async def test_the_client_times_each_sse_event(stub: Target) -> None:
    paced = Target("stub", stub.host, stub.port, "/real/v1/chat/completions", b"")
    conn = await connect(paced, Options(events=True, headers=True, body=True))
    try:
        exchange = await conn.call(paced.request(orjson.dumps({"stream": True})), Exchange())
    finally:
        conn.close()
    assert exchange.status == 200
    # One data: event per token; the last write also carries the finish chunk and [DONE].
    assert exchange.events is not None and len(exchange.events) == 6
    assert exchange.events == sorted(exchange.events)
    assert exchange.sent <= exchange.head <= exchange.events[0] <= exchange.done
    assert exchange.body is not None and exchange.body.endswith(b"data: [DONE]\n\n")
