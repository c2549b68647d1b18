"""Every provider litellm supports (Anthropic, Bedrock, Vertex, Gemini, Azure...), via litellm.

litellm costs ~2.8 s and ~190 MB to import, so it is imported on the first request to a
``type: litellm`` provider and never otherwise. It translates to and from the OpenAI format;
this adapter only maps its objects and exceptions onto the Upstream contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import orjson

from gateway.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from gateway.policy.schema import LiteLLMProvider
from gateway.providers.base import Endpoint, UpstreamReply, UpstreamRequest, Usage
from gateway.providers.sse import event

_JSON = "application/json"


def _import_litellm() -> ModuleType:
    # Without this litellm downloads its price map at import; there is no network to rely on.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return importlib.import_module("litellm")


class LiteLLMStream:
    """A litellm streaming response re-emitted as OpenAI SSE events."""

    replica = "litellm"

    def __init__(self, response: Any) -> None:
        self._response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response:
                yield event(chunk.model_dump(exclude_none=False))
        except Exception as exc:
            translated = _translate(exc, "litellm")
            if isinstance(translated, UpstreamReply):
                translated = UpstreamError("upstream litellm failed mid-stream", retryable=False)
            raise translated from None
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        close = getattr(self._response, "aclose", None)
        if close is not None:
            # Closing a half-read stream is best effort by nature.
            with contextlib.suppress(Exception):
                await close()


class LiteLLMUpstream:
    """The :class:`gateway.providers.base.Upstream` for ``type: litellm`` providers."""

    def __init__(self, name: str, spec: LiteLLMProvider) -> None:
        self.name = name
        self.spec = spec
        self._module: ModuleType | None = None
        self._lock = asyncio.Lock()

    async def _litellm(self) -> ModuleType:
        if self._module is None:
            async with self._lock:
                if self._module is None:
                    # Importing takes seconds: keep it off the event loop.
                    self._module = await asyncio.to_thread(_import_litellm)
        return self._module

    def _arguments(self, request: UpstreamRequest) -> dict[str, Any]:
        arguments = {**self.spec.params, **request.body, "timeout": request.timeout_s}
        if self.spec.api_key and self.spec.api_key != "none":
            arguments["api_key"] = self.spec.api_key
        if self.spec.api_base:
            arguments["api_base"] = self.spec.api_base
        return arguments

    async def _call(self, request: UpstreamRequest) -> Any:
        litellm = await self._litellm()
        arguments = self._arguments(request)
        function = {
            Endpoint.CHAT: litellm.acompletion,
            Endpoint.COMPLETIONS: litellm.atext_completion,
            Endpoint.EMBEDDINGS: litellm.aembedding,
        }[request.endpoint]
        try:
            return await function(**arguments)
        except Exception as exc:
            translated = _translate(exc, self.name)
            if isinstance(translated, UpstreamReply):
                return translated
            raise translated from None

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        result = await self._call(request)
        if isinstance(result, UpstreamReply):
            return result
        payload = result.model_dump()
        return UpstreamReply(
            200, orjson.dumps(payload), _JSON, "litellm", Usage.from_openai(payload.get("usage"))
        )

    async def open_stream(self, request: UpstreamRequest) -> LiteLLMStream | UpstreamReply:
        result = await self._call(request)
        if isinstance(result, UpstreamReply):
            return result
        return LiteLLMStream(result)

    async def aclose(self) -> None:
        return None


def _translate(exc: Exception, where: str) -> Any:
    """Map a litellm exception onto the Upstream contract.

    Client errors (4xx other than 429) become a reply the client sees as it came; everything
    else is an UpstreamError the pipeline may fail over from.
    """
    status = getattr(exc, "status_code", None)
    message = " ".join(str(getattr(exc, "message", exc)).split())[:500]
    name = type(exc).__name__
    if "Timeout" in name:
        return UpstreamTimeout(f"upstream {where} timed out: {message}")
    if "APIConnectionError" in name:
        return UpstreamConnectError(f"could not reach upstream {where}: {message}")
    if isinstance(status, int) and 400 <= status < 500 and status != 429:
        body = orjson.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        return UpstreamReply(status, body, _JSON, "litellm", None)
    return UpstreamError(
        f"upstream {where} failed: {message}",
        status=429 if status == 429 else 502,
    )
