"""The harness's reference proxy (bench/passthrough.py): it forwards JSON as bytes and relays a
stream as it arrives, so the bench can measure a bare Python proxy beside the gateway."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
import uvicorn

from bench.client import Exchange, Options, Target, connect
from bench.stub import StubConfig, StubProtocol, StubStats

TTFT_S, INTERVAL_S = 0.2, 0.1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[int, StubStats]]:
    """The stub (paced: first token after 200 ms, then one every 100 ms) and the passthrough in
    front of it, both in this event loop."""
    stats = StubStats()
    config = StubConfig(tokens=3, real_ttft_s=TTFT_S, real_interval_s=INTERVAL_S)
    loop = asyncio.get_running_loop()
    stub = await loop.create_server(lambda: StubProtocol(config, stats), "127.0.0.1", 0)
    monkeypatch.setenv("UPSTREAM", f"http://127.0.0.1:{stub.sockets[0].getsockname()[1]}")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config("bench.passthrough:app", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        yield port, stats
    finally:
        server.should_exit = True
        await serving
        stub.close()
        await stub.wait_closed()


async def _call(port: int, path: str, body: bytes) -> Exchange:
    """One request to the passthrough on a connection of its own; events timed for a stream."""
    target = Target("passthrough", "127.0.0.1", port, path, b"")
    conn = await connect(target, Options(events=True, body=True))
    try:
        return await conn.call(target.request(body))
    finally:
        conn.close()


async def test_json_is_forwarded_on_every_route(
    proxy: tuple[int, StubStats],
) -> None:
    port, stats = proxy
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    for path in ("/v1/chat/completions", "/fast/v1/chat/completions", "/real/v1/chat/completions"):
        answer = await _call(port, path, body)
        assert answer.status == 200 and answer.body is not None
        assert orjson.loads(bytes(answer.body))["object"] == "chat.completion"
    assert stats.requests == 3 and stats.streams == 0


async def test_a_stream_is_relayed_as_it_arrives_not_buffered(
    proxy: tuple[int, StubStats],
) -> None:
    port, stats = proxy
    answer = await _call(port, "/real/v1/chat/completions", b'{"model":"m","stream": true}')
    assert answer.status == 200 and answer.body is not None
    assert bytes(answer.body).endswith(b"data: [DONE]\n\n")
    assert stats.streams == 1
    events = answer.events or []
    assert len(events) >= 3
    # Each token left the stub 100 ms after the one before; a buffering proxy would deliver
    # them together at the end.
    assert events[0] - answer.sent >= TTFT_S * 0.8
    assert events[-1] - events[0] >= 2 * INTERVAL_S * 0.8


async def test_a_stream_keeps_its_prefix_the_fast_stubs_comes_at_once(
    proxy: tuple[int, StubStats],
) -> None:
    port, _ = proxy
    answer = await _call(port, "/fast/v1/chat/completions", b'{"model":"m","stream":true}')
    assert answer.status == 200 and answer.events
    # Not sent to /real (200 ms to the first token there).
    assert answer.events[-1] - answer.sent < TTFT_S / 2
