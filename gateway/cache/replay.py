"""Serving a hit: the stored answer as JSON, or replayed as a well-formed SSE stream.

A JSON hit is byte concatenation (a fresh ``id`` and ``created`` in front of the stored body). A
stream hit parses the stored body once and writes the events OpenAI would have sent: per choice a
role chunk, content chunks of about :data:`PIECE_CHARS` characters, a chunk per tool call, a
finish chunk; then a usage chunk when the client asked for ``stream_options.include_usage`` (and
``"usage":null`` on every other chunk, as OpenAI does), then ``data: [DONE]``. The whole replay is
returned as one ``bytes``: the client's SSE parser does not care how the events are split into
writes, and one write is the cheapest.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from gateway.cache.entry import CHAT, CacheEntry

PIECE_CHARS = 16
DONE = b"data: [DONE]\n\n"


def new_id(entry: CacheEntry) -> str:
    """A fresh answer id in the style of the entry's kind (``chatcmpl-...`` / ``cmpl-...``)."""
    return ("chatcmpl-" if entry.kind == CHAT else "cmpl-") + secrets.token_hex(12)


def replay_json(
    entry: CacheEntry, answer_id: str | None = None, created: int | None = None
) -> bytes:
    """The stored answer with a new ``id`` and ``created`` (embeddings: as stored)."""
    body = entry.body
    if not entry.stamped:
        return body
    stamp = (
        b'{"id":'
        + orjson.dumps(answer_id or new_id(entry))
        + b',"created":'
        + str(int(time.time()) if created is None else created).encode()
    )
    if body == b"{}":
        return stamp + b"}"
    return stamp + b"," + body[1:]


def replay_stream(
    entry: CacheEntry,
    *,
    include_usage: bool,
    answer_id: str | None = None,
    created: int | None = None,
) -> bytes:
    """The stored chat or text completion as SSE events, ``data: [DONE]`` included."""
    answer: dict[str, Any] = orjson.loads(entry.body)
    head: dict[str, Any] = {
        "id": answer_id or new_id(entry),
        "object": "chat.completion.chunk" if entry.kind == CHAT else "text_completion",
        "created": int(time.time()) if created is None else created,
        "model": answer.get("model", ""),
    }
    for name in ("system_fingerprint", "service_tier"):
        if answer.get(name) is not None:
            head[name] = answer[name]
    # Every chunk shares its head: serialise it once and splice each choices list in.
    prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":'
    suffix = b',"usage":null}\n\n' if include_usage else b"}\n\n"
    events: list[bytes] = []
    write = events.append
    for choice in answer.get("choices") or ():
        chunks = _chat_choice(choice) if entry.kind == CHAT else _text_choice(choice)
        for chunk in chunks:
            write(prefix + orjson.dumps([chunk]) + suffix)
    if include_usage:
        usage = answer.get("usage")
        write(prefix + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n")
    write(DONE)
    return b"".join(events)


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def _chat_choice(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice.get("index", 0)
    message: dict[str, Any] = choice.get("message") or {}
    content = message.get("content")
    chunks: list[dict[str, Any]] = []

    def add(delta: dict[str, Any], logprobs: Any = None, finish: Any = None) -> None:
        chunks.append(
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        )

    add({"role": message.get("role", "assistant"), "content": "" if content is not None else None})
    # Logprobs travel whole on the first content chunk: the SDK concatenates the lists.
    logprobs = choice.get("logprobs")
    if isinstance(content, str):
        for piece in _pieces(content):
            add({"content": piece}, logprobs)
            logprobs = None
    refusal = message.get("refusal")
    if isinstance(refusal, str):
        for piece in _pieces(refusal):
            add({"refusal": piece}, logprobs)
            logprobs = None
    if logprobs is not None:
        add({}, logprobs)
    for position, call in enumerate(message.get("tool_calls") or ()):
        add({"tool_calls": [{"index": position, **call}]})
    function_call = message.get("function_call")
    if function_call is not None:
        add({"function_call": function_call})
    for name in ("audio", "annotations"):
        if message.get(name):
            add({name: message[name]})
    add({}, None, choice.get("finish_reason"))
    return chunks


def _text_choice(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice.get("index", 0)
    text = choice.get("text") or ""
    logprobs = choice.get("logprobs")
    chunks: list[dict[str, Any]] = []
    for piece in _pieces(text):
        chunks.append({"text": piece, "index": index, "logprobs": logprobs, "finish_reason": None})
        logprobs = None
    chunks.append(
        {"text": "", "index": index, "logprobs": logprobs, "finish_reason": choice["finish_reason"]}
    )
    return chunks
