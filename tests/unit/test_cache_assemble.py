"""A streamed answer assembled into the non-stream answer, and only when it completed normally."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.cache import entry as entries
from gateway.cache.assemble import StreamAssembler
from gateway.cache.entry import CHAT, TEXT
from gateway.providers.base import Endpoint
from gateway.sim.config import SimConfig
from gateway.sim.engine import SimEngine, SimReply, SimStream

MESSAGES = [{"role": "user", "content": "Tell me about caches."}]


async def sim_both(
    endpoint: Endpoint, body: dict[str, Any], output: str | None = None
) -> tuple[dict[str, Any], list[bytes]]:
    """The simulator's non-stream answer and its streamed events for the same request."""
    engine = SimEngine(SimConfig(output=output))
    reply = await engine.handle(endpoint, body, stream=False)
    assert isinstance(reply, SimReply) and reply.status == 200
    stream = await engine.handle(endpoint, {**body, "stream": True}, stream=True)
    assert isinstance(stream, SimStream)
    events = [event async for event in stream]
    return orjson.loads(reply.body), events


def assemble(kind: int, events: list[bytes], max_bytes: int = 1 << 20) -> dict[str, Any] | None:
    assembler = StreamAssembler(kind, max_bytes)
    for event in events:
        assembler.feed(event)
    return assembler.answer()


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """What must agree between a streamed and a non-stream answer."""
    out = {k: v for k, v in answer.items() if k not in ("id", "created")}
    for choice in out["choices"]:
        message = choice.get("message")
        if message is not None:
            message.pop("annotations", None)  # not sent in the sim's stream deltas
    return out


@pytest.mark.parametrize("n", [1, 3])
async def test_sim_chat_stream_assembles_into_the_non_stream_answer(n: int) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "max_tokens": 40,
        "n": n,
        "stream_options": {"include_usage": True},
    }
    plain, events = await sim_both(Endpoint.CHAT, body)
    assembled = assemble(CHAT, events)
    assert assembled is not None
    assert comparable(assembled) == comparable(plain)
    assert (
        assembled["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    )
    assert assembled["usage"] == plain["usage"]


async def test_sim_text_stream_with_fixed_output_assembles() -> None:
    body = {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Say it",
        "stream_options": {"include_usage": True},
    }
    plain, events = await sim_both(
        Endpoint.COMPLETIONS, body, output="Caches remember. ünïcödé ✓ 🚀!"
    )
    assembled = assemble(TEXT, events)
    assert assembled is not None
    assert comparable(assembled) == comparable(plain)
    assert assembled["choices"][0]["text"] == "Caches remember. ünïcödé ✓ 🚀!"


async def test_stream_without_usage_assembles_without_usage() -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
    _, events = await sim_both(Endpoint.CHAT, body)
    assembled = assemble(CHAT, events)
    assert assembled is not None and "usage" not in assembled
    raw = entries.from_answer(assembled, CHAT, deployment="d", cost_usd=0.0, usage=(9, 5, 0))
    found = entries.decode(raw or b"")
    assert found is not None and (found.prompt_tokens, found.completion_tokens) == (9, 5)


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def test_tool_call_deltas_are_merged() -> None:
    events = [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "time", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
        chunk({}, "tool_calls"),
        DONE,
    ]
    assembled = assemble(CHAT, events)
    assert assembled is not None
    message = assembled["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    assert assembled["choices"][0]["finish_reason"] == "tool_calls"


def test_comments_and_multiline_events_are_understood() -> None:
    events = [
        b": keep-alive\n\n",
        chunk({"role": "assistant", "content": ""}),
        b"event: message\n" + chunk({"content": "hi"}),
        chunk({}, "stop"),
        DONE,
    ]
    assembled = assemble(CHAT, events)
    assert assembled is not None and assembled["choices"][0]["message"]["content"] == "hi"


GOOD = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    chunk({}, "stop"),
    DONE,
]


@pytest.mark.parametrize(
    "events",
    [
        GOOD[:-1],  # cut before [DONE]
        [GOOD[0], GOOD[1], DONE],  # no finish_reason
        [
            GOOD[0],
            GOOD[1],
            b'data: {"error": {"message": "upstream broke", "type": "server_error"}}\n\n',
            DONE,
        ],
        [GOOD[0], b"event: error\ndata: {}\n\n", GOOD[2], DONE],
        [GOOD[0], b"data: {half a chunk\n\n", GOOD[2], DONE],
        [GOOD[0], b'data: {"choices": [{"delta": "not an object"}]}\n\n', GOOD[2], DONE],
        [*GOOD, chunk({"content": "more after the end"})],
        [DONE],  # nothing at all
        [
            chunk({"content": "a"}, index=0),
            chunk({}, "stop", index=0),
            chunk({"content": "b"}, index=1),
            DONE,
        ],
    ],
    ids=[
        "no-done",
        "no-finish",
        "error-chunk",
        "error-event",
        "bad-json",
        "bad-shape",
        "after-done",
        "empty",
        "choice-unfinished",
    ],
)
def test_partial_or_failed_streams_are_never_assembled(events: list[bytes]) -> None:
    assert assemble(CHAT, events) is None


def test_a_stream_far_over_the_entry_limit_is_given_up() -> None:
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": "x" * 100}) for _ in range(100)]
    events += [chunk({}, "stop"), DONE]
    assert assemble(CHAT, events, max_bytes=1000) is None
    assert assemble(CHAT, events, max_bytes=100_000) is not None


def test_feed_hands_back_the_chunk_it_parsed_for_reuse() -> None:
    """The relay reuses the parse (for the text it counts): each data event's chunk comes back;
    a comment, [DONE] and anything after a failure give None."""
    assembler = StreamAssembler(CHAT, 1 << 20)
    chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    assert assembler.feed(b"data: " + orjson.dumps(chunk) + b"\n\n") == chunk
    assert assembler.feed(b": keep-alive\n\n") is None
    assert assembler.feed(b"data: [DONE]\n\n") is None
    assert assembler.feed(b"data: " + orjson.dumps(chunk) + b"\n\n") is None  # after [DONE]
    assert assembler.failed
    broken = StreamAssembler(CHAT, 1 << 20)
    assert broken.feed(b"data: {not json\n\n") is None and broken.failed
    assert broken.feed(b"data: " + orjson.dumps(chunk) + b"\n\n") is None
