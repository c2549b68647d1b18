"""The affinity key of a request: which requests should share a replica's KV cache.

Requests that start alike should land on the replica that has already computed that start. The
key hashes the request's leading part:

* chat: the leading system/developer messages; with none, the first message when more follow
  (the turns of one conversation share it); a lone message has no key (nothing to reuse);
* completions: the start of the prompt (a string; token-id prompts are hashed too);
* embeddings: no key (no KV cache to reuse).

Only the first ``max_chars`` characters are hashed: prefix caching works on leading blocks, and a
100 KB system prompt must not cost a 100 KB hash on every request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

MAX_CHARS = 4096
_LEADING_ROLES = frozenset({"system", "developer"})


def affinity_key(body: Mapping[str, Any], max_chars: int = MAX_CHARS) -> str | None:
    """A short hex key for the request's leading content, or None when it has none worth it."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return _chat_key(messages, max_chars)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return _digest(prompt[:max_chars].encode()) if prompt else None
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):  # a batch of prompts: the first one speaks for the batch
            return _digest(first[:max_chars].encode()) if first else None
        return _digest(orjson.dumps(prompt[:max_chars]))
    return None


def _chat_key(messages: list[Any], max_chars: int) -> str | None:
    leading: list[Any] = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") in _LEADING_ROLES:
            leading.append(message.get("content"))
        else:
            break
    if not leading:
        if len(messages) < 2 or not isinstance(messages[0], dict):
            return None
        leading = [messages[0].get("role"), messages[0].get("content")]
    if len(leading) == 1 and isinstance(leading[0], str):
        data = leading[0][:max_chars].encode()
    else:
        data = orjson.dumps(leading)[:max_chars]
    return _digest(data)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()
