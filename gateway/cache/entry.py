"""What a cache entry holds, and its byte format.

An entry is a small fixed header followed by the answer's JSON::

    "TGC1"  kind:u8  flags:u8  pad:2  prompt_tokens:u32  completion_tokens:u32
    cached_tokens:u32  cost_usd:f64  stored_at:f64  deployment_len:u16  deployment  body

Little-endian. ``body`` is the complete answer (chat completion, text completion or embeddings)
without its ``id`` and ``created``: a hit puts fresh ones in front of it by concatenating bytes
(``{"id":...,"created":...,`` + body[1:]), so serving a hit never parses or re-encodes the answer.
The header carries what a hit needs for accounting without reading the body: the tokens the
answer took, the deployment that served it and what it cost.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MAGIC = b"TGC1"
_HEAD = struct.Struct("<4sBBxxIIIddH")
_U32 = 0xFFFFFFFF

CHAT, TEXT, EMBEDDING = 0, 1, 2
_KIND_OF_ENDPOINT = {"chat/completions": CHAT, "completions": TEXT, "embeddings": EMBEDDING}
_HAS_ID = 1  # flag: the answer had an id and created, to be stamped afresh on a hit


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A decoded entry. ``body`` is the answer's JSON object without ``id`` and ``created``."""

    kind: int
    stamped: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    stored_at: float
    deployment: str
    body: bytes

    def encode(self) -> bytes:
        name = self.deployment.encode()[:0xFFFF]
        head = _HEAD.pack(
            MAGIC,
            self.kind,
            _HAS_ID if self.stamped else 0,
            _u32(self.prompt_tokens),
            _u32(self.completion_tokens),
            _u32(self.cached_tokens),
            self.cost_usd,
            self.stored_at,
            len(name),
        )
        return head + name + self.body


def _u32(value: int) -> int:
    return max(0, min(value, _U32))


def decode(data: bytes) -> CacheEntry | None:
    """The entry stored as ``data``; None for anything this version cannot read (a miss)."""
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        return None
    _, kind, flags, prompt, completion, cached, cost, stored_at, name_len = _HEAD.unpack_from(data)
    start = _HEAD.size + name_len
    if kind > EMBEDDING or len(data) < start + 2:
        return None
    try:
        deployment = data[_HEAD.size : start].decode()
    except UnicodeDecodeError:
        return None
    return CacheEntry(
        kind,
        bool(flags & _HAS_ID),
        prompt,
        completion,
        cached,
        cost,
        stored_at,
        deployment,
        data[start:],
    )


def kind_of(endpoint: str) -> int:
    """The entry kind for an endpoint path (``chat/completions``, ``completions``, ...)."""
    return _KIND_OF_ENDPOINT[str(endpoint)]


def complete(answer: Mapping[str, Any], kind: int) -> bool:
    """Whether ``answer`` is a whole, successful answer worth keeping (not an error, not cut)."""
    if "error" in answer:
        return False
    if kind == EMBEDDING:
        return isinstance(answer.get("data"), list)
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def from_answer(
    answer: dict[str, Any],
    kind: int,
    *,
    deployment: str,
    cost_usd: float,
    usage: tuple[int, int, int] | None = None,
) -> bytes | None:
    """Encode a parsed answer as an entry; None when it is not a complete, successful answer.

    Token counts come from the answer's ``usage``; ``usage`` (prompt, completion, cached) is the
    fallback when the answer has none, and is then written into the body too so a hit shows it.
    ``answer`` is consumed (its ``id`` and ``created`` are removed).
    """
    if not complete(answer, kind):
        return None
    stamped = answer.pop("id", None) is not None
    answer.pop("created", None)
    counted = _usage_of(answer.get("usage"))
    if counted is None and usage is not None:
        counted = usage
        prompt, completion, _ = usage
        answer["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    prompt, completion, cached = counted or (0, 0, 0)
    return CacheEntry(
        kind,
        stamped,
        prompt,
        completion,
        cached,
        cost_usd,
        time.time(),
        deployment,
        orjson.dumps(answer),
    ).encode()


def from_json(
    body: bytes,
    endpoint: str,
    *,
    deployment: str,
    cost_usd: float,
    usage: tuple[int, int, int] | None = None,
) -> bytes | None:
    """Encode an upstream's 2xx JSON answer as an entry; None when it cannot be kept."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    return from_answer(
        answer, kind_of(endpoint), deployment=deployment, cost_usd=cost_usd, usage=usage
    )


def _usage_of(usage: object) -> tuple[int, int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if type(prompt) is not int or type(completion) is not int:
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return prompt, completion, cached if type(cached) is int else 0
