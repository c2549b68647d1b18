"""The benchmark's upstream stub: its answers parse as OpenAI's, and it speaks HTTP/1.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from bench.client import Options, Target, connect
from bench.stub import StubConfig, StubProtocol, StubStats, chunk, json_answer, sse_events


def _data(events: list[bytes]) -> list[bytes]:
    """The payloads of the ``data:`` lines, in order."""
    joined = b"".join(events)
    return [part.split(b"\n\n", 1)[0] for part in joined.split(b"data: ")[1:]]


def test_json_answer_is_a_chat_completion_with_usage() -> None:
    body = orjson.loads(json_answer(tokens=3, prompt_tokens=10))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "tok tok tok"}
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


def test_sse_events_one_per_token_then_finish_and_done() -> None:
    events = sse_events(tokens=4, prompt_tokens=7, include_usage=False)
    assert len(events) == 4  # the finish chunk and [DONE] travel with the last token
    payloads = _data(events)
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "tok tok tok tok"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


def test_sse_usage_chunk_only_when_asked() -> None:
    payloads = _data(sse_events(tokens=2, prompt_tokens=5, include_usage=True))
    usage = orjson.loads(payloads[-2])
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_chunk_framing() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


@pytest.fixture
async def stub() -> AsyncIterator[tuple[int, StubStats]]:
    stats = StubStats()
    config = StubConfig(tokens=3, real_ttft_s=0.002, real_interval_s=0.001)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StubProtocol(config, stats), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], stats
    finally:
        server.close()
        await server.wait_closed()


async def test_the_stub_serves_json_and_streams_on_one_keep_alive_connection(
    stub: tuple[int, StubStats],
) -> None:
    port, stats = stub
    fast = Target("stub", "127.0.0.1", port, "/fast/v1/chat/completions", b"")
    conn = await connect(fast, Options(body=True))
    try:
        plain = await conn.call(fast.request(b'{"model":"m","messages":[]}'))
        streamed = await conn.call(fast.request(b'{"model":"m","stream":true}'))
        paced = Target("stub", "127.0.0.1", port, "/real/v1/chat/completions", b"")
        slow = await conn.call(
            paced.request(b'{"stream": true, "stream_options": {"include_usage": true}}')
        )
    finally:
        conn.close()
    assert plain.status == 200
    assert plain.body is not None
    assert orjson.loads(bytes(plain.body))["usage"]["completion_tokens"] == 3
    assert streamed.status == 200 and streamed.body is not None
    assert bytes(streamed.body).endswith(b"data: [DONE]\n\n")
    assert slow.status == 200 and slow.body is not None
    assert b'"usage":{"prompt_tokens"' in slow.body
    assert stats.requests == 3 and stats.streams == 2


async def test_stats_and_unknown_paths(stub: tuple[int, StubStats]) -> None:
    port, _ = stub
    conn = await connect(Target("stub", "127.0.0.1", port, "/", b""), Options(body=True))
    try:
        stats_reply = await conn.call(b"GET /stats HTTP/1.1\r\nhost: x\r\n\r\n")
        missing = await conn.call(b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n")
    finally:
        conn.close()
    assert stats_reply.body is not None
    assert orjson.loads(bytes(stats_reply.body)) == {"requests": 0, "streams": 0, "bytes_in": 0}
    assert missing.status == 404
