"""Replayed hits parsed by the official openai SDK over a real socket.

A tiny aiohttp server answers with exactly the bytes the cache would send (``replay_json`` or
``replay_stream``), so the SDK's own HTTP client and SSE parser do the reading.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from gateway.cache import entry as entries
from gateway.cache.assemble import StreamAssembler
from gateway.cache.entry import CacheEntry
from gateway.cache.replay import replay_json, replay_stream
from gateway.providers.base import Endpoint
from gateway.sim.engine import SimEngine, SimReply, SimStream

TEXT = "Caching: the art of answering twice while thinking once. ünïcödé ✓ 🚀 — fin."

CHAT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-original",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": TEXT, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "second choice", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        },
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    "system_fingerprint": "fp_1",
}

TOOL_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-tools",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "weather",
                            "arguments": '{"city": "Paris", "unit": "C"}',
                        },
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
}

TEXT_ANSWER: dict[str, Any] = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{"text": TEXT, "index": 0, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 25, "total_tokens": 28},
}


def entry_of(answer: dict[str, Any], endpoint: str) -> CacheEntry:
    raw = entries.from_answer(
        copy.deepcopy(answer), entries.kind_of(endpoint), deployment="d", cost_usd=0.0
    )
    found = entries.decode(raw or b"")
    assert found is not None
    return found


class Replayer:
    """Holds the entry the server replays; the test sets it before each call."""

    entry: CacheEntry | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.entry is not None
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=replay_json(self.entry), content_type="application/json")
        options = body.get("stream_options") or {}
        payload = replay_stream(self.entry, include_usage=bool(options.get("include_usage")))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()
        return response


@pytest.fixture
async def served() -> AsyncIterator[tuple[Replayer, openai.AsyncOpenAI]]:
    replayer = Replayer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", replayer.handle)
    app.router.add_post("/v1/completions", replayer.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0
    )
    try:
        yield replayer, client
    finally:
        await client.close()
        await runner.cleanup()


MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


async def test_sdk_stream_yields_the_same_text_and_usage_when_asked(
    served: tuple[Replayer, openai.AsyncOpenAI],
) -> None:
    replayer, client = served
    replayer.entry = entry_of(CHAT_ANSWER, "chat/completions")
    stream = await client.chat.completions.create(
        model="chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, str | None] = {}
    usage = None
    ids = set()
    async for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: TEXT, 1: "second choice"}
    assert finishes == {0: "stop", 1: "length"}
    assert usage is not None and usage.total_tokens == 42
    assert len(ids) == 1 and ids != {"chatcmpl-original"}


async def test_sdk_stream_has_no_usage_unless_asked(
    served: tuple[Replayer, openai.AsyncOpenAI],
) -> None:
    replayer, client = served
    replayer.entry = entry_of(CHAT_ANSWER, "chat/completions")
    stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert (
        "".join(
            c.choices[0].delta.content or ""
            for c in chunks
            if c.choices and c.choices[0].index == 0
        )
        == TEXT
    )


# The SDK's stream helper refuses answers cut by length, so this one has a single "stop" choice.
STOPPED = {**CHAT_ANSWER, "choices": CHAT_ANSWER["choices"][:1]}


@pytest.mark.parametrize("answer", [STOPPED, TOOL_ANSWER], ids=["content", "tools"])
async def test_sdk_stream_helper_rebuilds_the_stored_message(
    served: tuple[Replayer, openai.AsyncOpenAI], answer: dict[str, Any]
) -> None:
    replayer, client = served
    replayer.entry = entry_of(answer, "chat/completions")
    async with client.chat.completions.stream(model="chat", messages=MESSAGES) as stream:
        final = await stream.get_final_completion()
    for got, want in zip(final.choices, answer["choices"], strict=True):
        assert got.finish_reason == want["finish_reason"]
        assert got.message.content == want["message"]["content"]
        calls = [
            {
                "id": c.id,
                "type": c.type,
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in got.message.tool_calls or []
        ]
        assert calls == (want["message"].get("tool_calls") or [])


async def test_sdk_reads_the_json_replay(served: tuple[Replayer, openai.AsyncOpenAI]) -> None:
    replayer, client = served
    replayer.entry = entry_of(CHAT_ANSWER, "chat/completions")
    completion = await client.chat.completions.create(model="chat", messages=MESSAGES)
    assert completion.id != "chatcmpl-original" and completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content == TEXT
    assert completion.usage is not None and completion.usage.prompt_tokens == 12


async def test_sdk_text_completion_stream(served: tuple[Replayer, openai.AsyncOpenAI]) -> None:
    replayer, client = served
    replayer.entry = entry_of(TEXT_ANSWER, "completions")
    stream = await client.completions.create(
        model="x", prompt="p", stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    async for chunk in stream:
        text += "".join(choice.text for choice in chunk.choices)
        usage = chunk.usage or usage
    assert text == TEXT and usage is not None and usage.completion_tokens == 25


async def test_a_streamed_sim_answer_cached_then_replayed_reads_as_the_original(
    served: tuple[Replayer, openai.AsyncOpenAI],
) -> None:
    """The whole streamed-miss path: sim stream -> assembler -> entry -> replay -> SDK."""
    replayer, client = served
    engine = SimEngine()
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "max_tokens": 60,
        "stream_options": {"include_usage": True},
    }
    reply = await engine.handle(Endpoint.CHAT, body, stream=False)
    assert isinstance(reply, SimReply)
    expected = orjson.loads(reply.body)["choices"][0]["message"]["content"]
    stream = await engine.handle(Endpoint.CHAT, {**body, "stream": True}, stream=True)
    assert isinstance(stream, SimStream)
    assembler = StreamAssembler(entries.CHAT, 1 << 20)
    async for event in stream:
        assembler.feed(event)
    answer = assembler.answer()
    assert answer is not None
    raw = entries.from_answer(answer, entries.CHAT, deployment="sim", cost_usd=0.0)
    replayer.entry = entries.decode(raw or b"")
    streamed = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
    assert text == expected
    plain = await client.chat.completions.create(model="chat", messages=MESSAGES)
    assert plain.choices[0].message.content == expected
