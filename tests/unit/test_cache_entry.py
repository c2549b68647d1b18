"""Entries (byte format, what is kept) and replays (JSON with a fresh id; SSE events)."""

from __future__ import annotations

import copy
import time
from typing import Any

import orjson
import pytest

from gateway.cache import entry as entries
from gateway.cache.assemble import StreamAssembler
from gateway.cache.entry import CHAT, EMBEDDING, TEXT, CacheEntry, decode
from gateway.cache.replay import replay_json, replay_stream

CHAT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-original",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Two, three and five.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 21,
        "completion_tokens": 6,
        "total_tokens": 27,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
    "system_fingerprint": "fp_x",
}

TOOL_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-tools",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "m",
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
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "time", "arguments": '{"tz": "CET"}'},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80},
}


def encoded(answer: dict[str, Any], endpoint: str = "chat/completions") -> bytes:
    raw = entries.from_json(orjson.dumps(answer), endpoint, deployment="gpt-mini", cost_usd=0.25)
    assert raw is not None
    return raw


def test_entry_round_trip_keeps_accounting_and_drops_id() -> None:
    raw = encoded(CHAT_ANSWER)
    found = decode(raw)
    assert found is not None
    assert (found.kind, found.stamped, found.deployment, found.cost_usd) == (
        CHAT,
        True,
        "gpt-mini",
        0.25,
    )
    assert (found.prompt_tokens, found.completion_tokens, found.cached_tokens) == (21, 6, 4)
    assert abs(found.stored_at - time.time()) < 60
    body = orjson.loads(found.body)
    assert "id" not in body and "created" not in body
    expected = {k: v for k, v in CHAT_ANSWER.items() if k not in ("id", "created")}
    assert body == expected
    assert found.encode() == raw


@pytest.mark.parametrize(
    "data", [b"", b"TGC1", b"XXXX" + bytes(40), b"not an entry at all, but long enough to parse"]
)
def test_unreadable_bytes_are_a_miss(data: bytes) -> None:
    assert decode(data) is None


def test_only_complete_successful_answers_are_kept() -> None:
    cut = copy.deepcopy(CHAT_ANSWER)
    cut["choices"][0]["finish_reason"] = None
    error = {"error": {"message": "boom", "type": "server_error"}}
    bad: dict[str, Any]
    for bad in (cut, error, {"choices": []}, {"object": "x"}):
        assert (
            entries.from_json(orjson.dumps(bad), "chat/completions", deployment="d", cost_usd=0)
            is None
        )
    assert entries.from_json(b"[1, 2]", "chat/completions", deployment="d", cost_usd=0) is None
    assert entries.from_json(b"{not json", "chat/completions", deployment="d", cost_usd=0) is None


def test_usage_fallback_fills_a_body_without_usage() -> None:
    answer = {k: v for k, v in CHAT_ANSWER.items() if k != "usage"}
    raw = entries.from_answer(answer, CHAT, deployment="d", cost_usd=0.0, usage=(10, 3, 0))
    assert raw is not None
    found = decode(raw)
    assert found is not None and (found.prompt_tokens, found.completion_tokens) == (10, 3)
    assert orjson.loads(found.body)["usage"]["total_tokens"] == 13


def test_embeddings_are_replayed_as_stored() -> None:
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": "e",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    found = decode(encoded(answer, "embeddings"))
    assert found is not None and found.kind == EMBEDDING and not found.stamped
    assert orjson.loads(replay_json(found)) == answer


def test_json_replay_has_a_new_id_and_created_and_the_same_answer() -> None:
    found = decode(encoded(CHAT_ANSWER))
    assert found is not None
    first, second = orjson.loads(replay_json(found)), orjson.loads(replay_json(found))
    assert first["id"].startswith("chatcmpl-") and first["id"] != second["id"]
    assert first["id"] != CHAT_ANSWER["id"]
    assert abs(first["created"] - time.time()) < 60
    assert {k: v for k, v in first.items() if k not in ("id", "created")} == {
        k: v for k, v in CHAT_ANSWER.items() if k not in ("id", "created")
    }
    fixed = orjson.loads(replay_json(found, answer_id='odd"id', created=5))
    assert (fixed["id"], fixed["created"]) == ('odd"id', 5)


def events_of(stream: bytes) -> list[bytes]:
    assert stream.endswith(b"data: [DONE]\n\n")
    return [part + b"\n\n" for part in stream.split(b"\n\n") if part]


def chunks_of(stream: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e[6:]) for e in events_of(stream) if e != b"data: [DONE]\n\n"]


def test_stream_replay_shape_without_usage() -> None:
    found = decode(encoded(CHAT_ANSWER))
    assert found is not None
    chunks = chunks_of(replay_stream(found, include_usage=False))
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Two, three and five."
    assert all(len(d.get("content") or "") <= 16 for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_stream_replay_with_usage_ends_with_a_usage_chunk() -> None:
    found = decode(encoded(CHAT_ANSWER))
    assert found is not None
    chunks = chunks_of(replay_stream(found, include_usage=True))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == CHAT_ANSWER["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


@pytest.mark.parametrize("answer", [CHAT_ANSWER, TOOL_ANSWER], ids=["content", "tools"])
@pytest.mark.parametrize("include_usage", [True, False])
def test_replayed_stream_assembles_back_into_the_stored_answer(
    answer: dict[str, Any], include_usage: bool
) -> None:
    found = decode(encoded(answer))
    assert found is not None
    assembler = StreamAssembler(CHAT, 1 << 20)
    for event in events_of(replay_stream(found, include_usage=include_usage)):
        assembler.feed(event)
    again = assembler.answer()
    assert again is not None
    stored = orjson.loads(found.body)
    if not include_usage:
        stored.pop("usage")
    assert again == stored


def test_text_completion_replays_both_ways() -> None:
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "davinci",
        "choices": [
            {
                "text": "a long enough completion text to split",
                "index": 0,
                "logprobs": None,
                "finish_reason": "length",
            },
            {"text": "second", "index": 1, "logprobs": None, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 9, "total_tokens": 11},
    }
    found = decode(encoded(answer, "completions"))
    assert found is not None and found.kind == TEXT
    assert orjson.loads(replay_json(found))["id"].startswith("cmpl-")
    assembler = StreamAssembler(TEXT, 1 << 20)
    for event in events_of(replay_stream(found, include_usage=True)):
        assembler.feed(event)
    assert assembler.answer() == orjson.loads(found.body)


def test_replay_of_an_empty_object_body_is_still_json() -> None:
    found = CacheEntry(CHAT, True, 0, 0, 0, 0.0, 0.0, "d", b"{}")
    assert set(orjson.loads(replay_json(found))) == {"id", "created"}
