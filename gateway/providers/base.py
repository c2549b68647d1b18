"""The one interface every upstream implements.

An upstream takes an OpenAI-format request body (with ``model`` already rewritten to the
deployment's upstream name) and returns either a complete JSON reply or a stream of SSE events.

Contract shared by every kind:

* Failures before the first byte raise :class:`gateway.errors.UpstreamError` (or a subclass);
  ``retryable`` tells the pipeline whether another candidate may be tried. A 4xx other than 429 is
  not an error of the upstream: it comes back as an :class:`UpstreamReply` with its status and
  body, to be forwarded as it came.
* A stream yields complete SSE events as bytes, each ending in ``b"\\n\\n"``, as they arrive. It
  never raises after it started except :class:`gateway.errors.UpstreamError` for a broken
  connection; closing it (``aclose``) closes the upstream request so generation stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class Endpoint(StrEnum):
    """The OpenAI endpoints a deployment can serve, as paths under ``/v1``."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """Read an OpenAI ``usage`` object; None when it is missing or malformed."""
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens", 0)
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
        return cls(prompt, completion, cached if isinstance(cached, int) else 0)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    endpoint: Endpoint
    body: dict[str, Any]
    stream: bool
    timeout_s: float
    request_id: str
    # Requests with equal keys (e.g. a shared system prompt) prefer the same replica, whose
    # KV cache already holds that prefix.
    affinity_key: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A complete (non-streamed) answer, forwarded to the client byte for byte."""

    status: int
    body: bytes
    content_type: str
    replica: str
    usage: Usage | None


class UpstreamStream(Protocol):
    """An open SSE stream. Iterate for events; ``aclose`` ends the upstream request."""

    replica: str

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """A provider instance, built once per policy and shared by all requests."""

    name: str

    async def send(self, request: UpstreamRequest) -> UpstreamReply: ...

    async def open_stream(self, request: UpstreamRequest) -> UpstreamStream | UpstreamReply:
        """Open a stream; a non-2xx, non-retryable answer comes back as a reply instead."""
        ...

    async def aclose(self) -> None: ...
