"""The simulator's engine and its in-process upstream, without HTTP."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from gateway import tokens
from gateway.errors import InvalidRequest, UpstreamError
from gateway.policy.schema import SimProvider
from gateway.providers.base import Endpoint, UpstreamReply, UpstreamRequest, Usage
from gateway.providers.sim import SimUpstream
from gateway.sim.answers import DEFAULT_COMPLETION_TOKENS, DEFAULT_DIMENSIONS, sleep_at_least
from gateway.sim.engine import ERROR_BODY, SimConfig, SimEngine, SimReply, SimStream

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours.", "name": "ann"},
]
TOOLS = [{"type": "function", "function": {"name": "pick", "description": "Pick one."}}]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES} | extra


async def reply(engine: SimEngine, endpoint: Endpoint, body: object) -> tuple[int, Any]:
    result = await engine.handle(endpoint, body)
    assert isinstance(result, SimReply)
    return result.status, orjson.loads(result.body)


async def events(stream: SimStream) -> list[Any]:
    out: list[Any] = []
    async for event in stream:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        payload = event[len(b"data: ") : -2]
        out.append(payload.decode() if payload == b"[DONE]" else orjson.loads(payload))
    return out


async def test_chat_answer_has_exact_tokens_and_the_gateways_prompt_count() -> None:
    engine = SimEngine()
    status, body = await reply(engine, Endpoint.CHAT, chat(max_tokens=7, n=2, tools=TOOLS))
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-sim-")
    assert body["model"] == "gpt-4o-mini"
    assert body["system_fingerprint"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        assert choice["finish_reason"] == "length"
        assert choice["message"]["role"] == "assistant"
        assert tokens.count_text(choice["message"]["content"], "gpt-4o-mini") == 7
    prompt = tokens.count_chat(MESSAGES, "gpt-4o-mini", tools=TOOLS)
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt
    assert usage["completion_tokens"] == 14
    assert usage["total_tokens"] == prompt + 14
    assert Usage.from_openai(usage) == Usage(prompt, 14, 0)


async def test_token_limit_precedence_and_default() -> None:
    engine = SimEngine()
    _, body = await reply(engine, Endpoint.CHAT, chat(max_tokens=9, max_completion_tokens=3))
    assert body["usage"]["completion_tokens"] == 3
    _, body = await reply(engine, Endpoint.CHAT, chat())
    assert body["usage"]["completion_tokens"] == DEFAULT_COMPLETION_TOKENS
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_completions_answer_each_prompt_n_times() -> None:
    engine = SimEngine()
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": ["one", "two words"], "max_tokens": 4}
    status, answer = await reply(engine, Endpoint.COMPLETIONS, body | {"n": 2})
    assert status == 200
    assert answer["object"] == "text_completion"
    assert answer["id"].startswith("cmpl-sim-")
    assert len(answer["choices"]) == 4
    assert all(
        tokens.count_text(c["text"], "gpt-3.5-turbo-instruct") == 4 for c in answer["choices"]
    )
    assert answer["usage"] == {
        "prompt_tokens": tokens.count_prompt(body["prompt"], "gpt-3.5-turbo-instruct"),
        "completion_tokens": 16,
        "total_tokens": tokens.count_prompt(body["prompt"], "gpt-3.5-turbo-instruct") + 16,
    }
    _, answer = await reply(engine, Endpoint.COMPLETIONS, {"model": "m", "prompt": [1, 2, 3]})
    assert len(answer["choices"]) == 1
    assert answer["usage"]["prompt_tokens"] == 3
    assert answer["usage"]["completion_tokens"] == DEFAULT_COMPLETION_TOKENS


async def test_embeddings_are_deterministic_unit_vectors_in_both_formats() -> None:
    engine = SimEngine()
    request = {"model": "text-embedding-3-small", "input": ["hello", "world", "hello"]}
    _, floats = await reply(engine, Endpoint.EMBEDDINGS, request)
    _, b64 = await reply(engine, Endpoint.EMBEDDINGS, request | {"encoding_format": "base64"})
    vectors = [d["embedding"] for d in floats["data"]]
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    assert all(len(v) == DEFAULT_DIMENSIONS for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    for vector, item in zip(vectors, b64["data"], strict=True):
        raw = base64.b64decode(item["embedding"])
        assert list(struct.unpack(f"<{DEFAULT_DIMENSIONS}f", raw)) == vector
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    _, sized = await reply(
        engine, Endpoint.EMBEDDINGS, {"model": "m", "input": [[1, 2]], "dimensions": 5}
    )
    assert len(sized["data"][0]["embedding"]) == 5
    assert sized["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (Endpoint.CHAT, b"{not json", None),
        (Endpoint.CHAT, [1, 2], None),
        (Endpoint.CHAT, {"messages": MESSAGES}, "model"),
        (Endpoint.CHAT, {"model": "m"}, "messages"),
        (Endpoint.CHAT, {"model": "m", "messages": []}, "messages"),
        (Endpoint.CHAT, {"model": "m", "messages": ["hi"]}, "messages"),
        (Endpoint.CHAT, chat(max_tokens="5"), "max_tokens"),
        (Endpoint.CHAT, chat(max_tokens=2.5), "max_tokens"),
        (Endpoint.CHAT, chat(max_tokens=True), "max_tokens"),
        (Endpoint.CHAT, chat(max_tokens=0), "max_tokens"),
        (Endpoint.CHAT, chat(max_completion_tokens=-1), "max_completion_tokens"),
        (Endpoint.CHAT, chat(n=0), "n"),
        (Endpoint.CHAT, chat(stream="yes"), "stream"),
        (Endpoint.COMPLETIONS, {"model": "m"}, "prompt"),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": ["a", 1]}, "prompt"),
        (Endpoint.EMBEDDINGS, {"model": "m", "input": []}, "input"),
        (
            Endpoint.EMBEDDINGS,
            {"model": "m", "input": "x", "encoding_format": "hex"},
            "encoding_format",
        ),
        (Endpoint.EMBEDDINGS, {"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
async def test_bad_requests_get_a_400_envelope(
    endpoint: Endpoint, body: object, param: str | None
) -> None:
    engine = SimEngine()
    status, answer = await reply(engine, endpoint, body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert engine.stats.bad_requests == 1


async def test_error_rate_and_seed() -> None:
    engine = SimEngine(SimConfig(error_rate=1.0))
    result = await engine.handle(Endpoint.CHAT, chat())
    assert isinstance(result, SimReply)
    assert (result.status, result.body) == (500, ERROR_BODY)
    assert orjson.loads(ERROR_BODY)["error"] == {
        "message": "simulated upstream failure",
        "type": "server_error",
        "param": None,
        "code": "sim_error",
    }
    assert engine.stats.errors == 1

    async def pattern(engine: SimEngine) -> list[int]:
        return [getattr(await engine.handle(Endpoint.CHAT, chat()), "status", 0) for _ in range(40)]

    first = await pattern(SimEngine(SimConfig(error_rate=0.5, seed=7)))
    assert first == await pattern(SimEngine(SimConfig(error_rate=0.5, seed=7)))
    assert set(first) == {200, 500}


async def test_stream_events_follow_openai() -> None:
    engine = SimEngine()
    body = chat(max_tokens=5, stream=True, stream_options={"include_usage": True})
    stream = await engine.handle(Endpoint.CHAT, body)
    assert isinstance(stream, SimStream)
    assert stream.replica == "sim"
    assert engine.stats.in_flight == 1
    got = await events(stream)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1])
    assert tokens.count_text(text, "gpt-4o-mini") == 5
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:-1]] == [None] * 5 + ["length"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-1]["usage"]["prompt_tokens"] == tokens.count_chat(MESSAGES, "gpt-4o-mini")
    assert (engine.stats.in_flight, engine.stats.completed, engine.stats.cancelled) == (0, 1, 0)


async def test_completion_stream_without_usage() -> None:
    engine = SimEngine()
    stream = await engine.handle(
        Endpoint.COMPLETIONS, {"model": "m", "prompt": "hi", "max_tokens": 3, "stream": True}
    )
    assert isinstance(stream, SimStream)
    got = await events(stream)
    assert got[-1] == "[DONE]"
    assert all("usage" not in c for c in got[:-1])
    assert "".join(c["choices"][0]["text"] for c in got[:-1]) == tokens.encode_exact(3, "m")
    assert got[-2]["choices"][0]["finish_reason"] == "length"


async def test_stream_timing_lower_bounds() -> None:
    engine = SimEngine(SimConfig(ttft_ms=150, tokens_per_s=50))
    started = time.perf_counter()
    stream = await engine.handle(Endpoint.CHAT, chat(max_tokens=6, stream=True))
    assert isinstance(stream, SimStream)
    first = await anext(stream)
    assert time.perf_counter() - started >= 0.15
    async for _ in stream:
        pass
    # 5 more tokens at 50/s: at least 100 ms after the first one.
    assert time.perf_counter() - started >= 0.15 + 5 / 50
    assert b'"role":"assistant"' in first


async def test_non_streamed_answer_waits_for_the_whole_generation() -> None:
    engine = SimEngine(SimConfig(ttft_ms=50, tokens_per_s=100))
    started = time.perf_counter()
    status, _ = await reply(engine, Endpoint.CHAT, chat(max_tokens=11))
    assert status == 200
    assert time.perf_counter() - started >= 0.05 + 10 / 100


async def test_closing_a_stream_early_counts_a_cancellation() -> None:
    engine = SimEngine(SimConfig(tokens_per_s=1000))
    stream = await engine.handle(Endpoint.CHAT, chat(max_tokens=50, stream=True))
    assert isinstance(stream, SimStream)
    await anext(stream)
    await stream.aclose()
    assert stream.cancelled
    assert (engine.stats.in_flight, engine.stats.completed, engine.stats.cancelled) == (0, 0, 1)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_cancelling_a_non_streamed_call_counts_it() -> None:
    engine = SimEngine(SimConfig(ttft_ms=5000))
    task = asyncio.ensure_future(engine.handle(Endpoint.CHAT, chat()))
    await asyncio.sleep(0.05)
    assert engine.stats.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (engine.stats.in_flight, engine.stats.cancelled) == (0, 1)


async def test_fixed_output_is_sent_and_cut_at_the_limit() -> None:
    engine = SimEngine(SimConfig(output="Bonjour, le monde est très beau aujourd'hui."))
    _, body = await reply(engine, Endpoint.CHAT, chat())
    assert body["choices"][0]["message"]["content"] == engine.config.output
    assert body["choices"][0]["finish_reason"] == "stop"
    full = tokens.count_text(engine.config.output or "", "gpt-4o-mini")
    assert body["usage"]["completion_tokens"] == full
    _, body = await reply(engine, Endpoint.CHAT, chat(max_tokens=3))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert (engine.config.output or "").startswith(body["choices"][0]["message"]["content"])


def test_config_changes_are_validated() -> None:
    engine = SimEngine()
    config = engine.configure({"ttft_ms": 700, "tokens_per_s": 50, "error_rate": 1, "output": "x"})
    assert config == engine.config
    assert config.as_dict() == {
        "ttft_ms": 700.0,
        "tokens_per_s": 50.0,
        "error_rate": 1.0,
        "output": "x",
        "model_name": "sim",
        "seed": None,
    }
    for bad in (
        {"nope": 1},
        {"ttft_ms": -1},
        {"error_rate": 1.5},
        {"error_rate": True},
        {"tokens_per_s": "fast"},
        {"ttft_ms": float("nan")},
        {"output": 3},
        {"model_name": ""},
        {"seed": 1.5},
    ):
        with pytest.raises(InvalidRequest):
            engine.configure(bad)
    assert engine.config == config


async def test_stats_count_calls_and_reset_keeps_in_flight() -> None:
    engine = SimEngine()
    await engine.handle(Endpoint.CHAT, chat())
    await engine.handle(Endpoint.EMBEDDINGS, {"model": "m", "input": "x"})
    stream = await engine.handle(Endpoint.CHAT, chat(stream=True))
    stats = engine.stats.as_dict()
    assert stats["calls"] == 3
    assert stats["by_endpoint"] == {"chat/completions": 2, "embeddings": 1}
    assert (stats["in_flight"], stats["completed"]) == (1, 2)
    engine.stats.reset()
    assert engine.stats.as_dict() == {
        "calls": 0,
        "by_endpoint": {},
        "errors": 0,
        "bad_requests": 0,
        "in_flight": 1,
        "completed": 0,
        "cancelled": 0,
    }
    assert isinstance(stream, SimStream)
    await stream.aclose()
    assert engine.stats.in_flight == 0


# --- the in-process upstream ---------------------------------------------------------------------


def upstream_request(
    endpoint: Endpoint, body: dict[str, Any], stream: bool = False
) -> UpstreamRequest:
    return UpstreamRequest(endpoint, body, stream, timeout_s=5.0, request_id="req-1")


async def test_upstream_send_returns_a_reply_with_usage() -> None:
    upstream = SimUpstream("local", SimProvider(type="sim"))
    assert upstream.name == "local"
    result = await upstream.send(upstream_request(Endpoint.CHAT, chat(max_tokens=4)))
    assert isinstance(result, UpstreamReply)
    assert (result.status, result.content_type, result.replica) == (200, "application/json", "sim")
    assert result.usage == Usage(tokens.count_chat(MESSAGES, "gpt-4o-mini"), 4)
    assert orjson.loads(result.body)["usage"]["completion_tokens"] == 4
    bad = await upstream.send(upstream_request(Endpoint.CHAT, {"model": "m"}))
    assert bad.status == 400
    await upstream.aclose()


async def test_upstream_failure_raises_a_retryable_error() -> None:
    upstream = SimUpstream("local", SimProvider(type="sim", error_rate=1.0))
    for call in (upstream.send, upstream.open_stream):
        with pytest.raises(UpstreamError) as caught:
            await call(upstream_request(Endpoint.CHAT, chat(), stream=True))
        assert caught.value.status == 502  # as an HTTP upstream answering 500 is reported
        assert caught.value.retryable
        assert caught.value.message == "upstream sim returned 500: simulated upstream failure"


async def test_upstream_stream_yields_events_and_stops_on_close() -> None:
    upstream = SimUpstream("local", SimProvider(type="sim", ttft_ms=10, output="one two three"))
    request = upstream_request(Endpoint.CHAT, chat(stream_options={"include_usage": True}), True)
    stream = await upstream.open_stream(request)
    assert isinstance(stream, SimStream)
    assert stream.replica == "sim"
    got = await events(stream)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in got[1:-2] if c["choices"])
    assert text == "one two three"
    assert not stream.cancelled

    stream = await upstream.open_stream(request)
    assert isinstance(stream, SimStream)
    await anext(stream)
    await stream.aclose()
    assert stream.cancelled
    assert upstream.engine.stats.cancelled == 1
    bad = await upstream.open_stream(upstream_request(Endpoint.CHAT, {"model": "m"}, True))
    assert isinstance(bad, UpstreamReply) and bad.status == 400


class _MillisecondLoop(asyncio.SelectorEventLoop):
    """A loop whose clock, like libuv's, counts whole milliseconds: a timer due at a millisecond
    fires as soon as the loop wakes within it, up to a millisecond early by the high-resolution
    clock, when something else (another stream) keeps the loop awake."""

    def time(self) -> float:
        return math.floor(super().time() * 1000) / 1000


def test_the_simulated_latency_is_a_floor_even_on_a_millisecond_clock() -> None:
    async def shortest(sleep: Callable[[float], Awaitable[None]]) -> float:
        async def other_work() -> None:
            while True:  # noqa: ASYNC110 - it keeps the loop awake, as other streams would
                await asyncio.sleep(0)

        busy = asyncio.get_running_loop().create_task(other_work())
        durations = []
        for _ in range(20):
            started = time.perf_counter()
            await sleep(0.005)
            durations.append(time.perf_counter() - started)
        busy.cancel()
        return min(durations)

    loop = _MillisecondLoop()
    try:
        assert loop.run_until_complete(shortest(asyncio.sleep)) < 0.005  # the trouble, shown
        assert loop.run_until_complete(shortest(sleep_at_least)) >= 0.005
    finally:
        loop.close()
