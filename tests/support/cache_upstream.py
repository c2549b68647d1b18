"""What the cache tests serve: a policy with a cache section, an answer, a slow upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.policy.schema import PolicyDocument


def document(timeout_s: float = 30, **cache: Any) -> PolicyDocument:
    """One route `chat` on a sim deployment, cached with ``cache`` settings."""
    return PolicyDocument.model_validate(
        {
            "providers": {"sim": {"type": "sim"}},
            "models": {"m": {"provider": "sim", "model": "m"}},
            "routes": {"chat": {"candidates": ["m"], "timeout_s": timeout_s}},
            "cache": cache,
        }
    )


def answer(text: str) -> bytes:
    """A complete chat completion saying ``text``."""
    return orjson.dumps(
        {
            "id": "chatcmpl-up",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
        }
    )


class SlowUpstream:
    """A real coroutine that takes a while and counts its calls; may be told to fail."""

    def __init__(self, delay_s: float = 0.05, failures: int = 0) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self.failures = failures

    async def __call__(self) -> bytes:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("upstream failed")
        return answer(f"answer {self.calls}")
