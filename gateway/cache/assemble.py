"""A streamed answer, assembled into the equivalent non-stream answer so it can be cached.

The pipeline hands :meth:`StreamAssembler.feed` every SSE event it relays (bytes, one event each).
:meth:`StreamAssembler.answer` gives the completion only when the stream ended normally:
``data: [DONE]`` seen, every choice finished, no error event, and not larger than the limit. A
stream that was cut, failed or grew too big is never cached; the assembler then stops parsing
(one flag test per event) so a lost cause costs nothing more.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.cache.entry import CHAT


class _Choice:
    """What the deltas of one choice added up to so far."""

    __slots__ = (
        "content",
        "finish_reason",
        "function_args",
        "function_name",
        "logprobs",
        "refusal",
        "role",
        "saw_content",
        "text_logprobs",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.saw_content = False
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_name: str | None = None
        self.function_args: list[str] | None = None
        self.logprobs: list[Any] | None = None
        self.text_logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None


class StreamAssembler:
    """Consumes a relayed SSE stream; yields the non-stream answer if it completed normally."""

    __slots__ = ("_choices", "_done", "_failed", "_head", "_kind", "_max_bytes", "_size", "_usage")

    def __init__(self, kind: int, max_bytes: int) -> None:
        self._kind = kind
        self._max_bytes = max_bytes
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None
        self._size = 0
        self._done = False
        self._failed = False

    @property
    def failed(self) -> bool:
        return self._failed

    def feed(self, event: bytes) -> dict[str, Any] | None:
        """Take one SSE event as relayed (``data: {...}\\n\\n``); the chunk it parsed from it,
        for the caller to reuse (None when it parsed none: a comment, ``[DONE]``, a failure)."""
        if self._failed:
            return None
        if self._done:  # anything after [DONE] is not an OpenAI stream
            self._failed = True
            return None
        payload = event[6:].strip() if event.startswith(b"data: ") else self._data_of(event)
        if payload is None:
            return None
        if payload == b"[DONE]":
            self._done = True
            return None
        self._size += len(payload)
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._failed = True
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            self._failed = True
            return None
        try:
            self._take(chunk)
        except (TypeError, AttributeError, KeyError, ValueError):
            self._failed = True  # a chunk shaped unlike OpenAI's: nothing to trust
            return None
        # SSE wraps each delta in ~150 bytes of JSON; the answer is far smaller than the stream.
        if self._size > 8 * self._max_bytes:
            self._failed = True
        return chunk

    def _data_of(self, event: bytes) -> bytes | None:
        """The data of a multi-line event; None for comments. An ``event: error`` fails it."""
        data: list[bytes] = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif line.startswith(b"event:") and line[6:].strip() == b"error":
                self._failed = True
                return None
        return b"\n".join(data) if data else None

    def _take(self, chunk: dict[str, Any]) -> None:
        head = self._head
        if not head:
            for name in ("model", "system_fingerprint", "service_tier"):
                if chunk.get(name) is not None:
                    head[name] = chunk[name]
        elif "system_fingerprint" not in head and chunk.get("system_fingerprint") is not None:
            head["system_fingerprint"] = chunk["system_fingerprint"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        for raw in chunk.get("choices") or ():
            index = raw.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _Choice()
            if self._kind == CHAT:
                _chat_delta(state, raw)
            else:
                _text_delta(state, raw)
            finish = raw.get("finish_reason")
            if finish is not None:
                state.finish_reason = finish

    def answer(self) -> dict[str, Any] | None:
        """The assembled answer (no ``id``/``created``), or None unless the stream completed."""
        if self._failed or not self._done or not self._choices:
            return None
        states = sorted(self._choices.items())
        if any(state.finish_reason is None for _, state in states):
            return None
        chat = self._kind == CHAT
        answer: dict[str, Any] = {"object": "chat.completion" if chat else "text_completion"}
        answer["model"] = self._head.get("model", "")
        answer["choices"] = [
            _chat_choice(i, state) if chat else _text_choice(i, state) for i, state in states
        ]
        if self._usage is not None:
            answer["usage"] = self._usage
        for name in ("system_fingerprint", "service_tier"):
            if name in self._head:
                answer[name] = self._head[name]
        return answer


def _chat_delta(state: _Choice, raw: dict[str, Any]) -> None:
    delta = raw.get("delta") or {}
    if delta.get("role"):
        state.role = delta["role"]
    content = delta.get("content")
    if content is not None:
        state.saw_content = True
        if content:
            state.content.append(content)
    refusal = delta.get("refusal")
    if refusal:
        state.refusal.append(refusal)
    for call in delta.get("tool_calls") or ():
        _merge_tool_call(state.tool_calls, call)
    function_call = delta.get("function_call")
    if function_call:
        if function_call.get("name"):
            state.function_name = function_call["name"]
        if state.function_args is None:
            state.function_args = []
        if function_call.get("arguments"):
            state.function_args.append(function_call["arguments"])
    logprobs = raw.get("logprobs")
    if isinstance(logprobs, dict) and logprobs.get("content"):
        if state.logprobs is None:
            state.logprobs = []
        state.logprobs.extend(logprobs["content"])


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = delta.get("index", len(calls))
    call = calls.get(index)
    if call is None:
        call = calls[index] = {"id": None, "type": "function", "name": "", "arguments": []}
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["name"] += function["name"]
    if function.get("arguments"):
        call["arguments"].append(function["arguments"])


def _text_delta(state: _Choice, raw: dict[str, Any]) -> None:
    text = raw.get("text")
    if text:
        state.content.append(text)
    logprobs = raw.get("logprobs")
    if isinstance(logprobs, dict):
        merged = state.text_logprobs
        if merged is None:
            merged = state.text_logprobs = {}
        for name, values in logprobs.items():
            if isinstance(values, list):
                merged.setdefault(name, []).extend(values)


def _chat_choice(index: int, state: _Choice) -> dict[str, Any]:
    content = "".join(state.content)
    message: dict[str, Any] = {
        "role": state.role,
        "content": content if content or (state.saw_content and not state.tool_calls) else None,
        "refusal": "".join(state.refusal) if state.refusal else None,
    }
    if state.tool_calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": call["type"],
                "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
            }
            for _, call in sorted(state.tool_calls.items())
        ]
    if state.function_args is not None:
        message["function_call"] = {
            "name": state.function_name or "",
            "arguments": "".join(state.function_args),
        }
    logprobs = {"content": state.logprobs, "refusal": None} if state.logprobs else None
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": state.finish_reason,
    }


def _text_choice(index: int, state: _Choice) -> dict[str, Any]:
    return {
        "text": "".join(state.content),
        "index": index,
        "logprobs": state.text_logprobs,
        "finish_reason": state.finish_reason,
    }
