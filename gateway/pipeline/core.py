"""The request path, top to bottom. Orchestration only: each step lives in its own module.

::

    check the body            validate.check            pure
    resolve the route         policy                    pure, on the policy snapshot taken at start
    count prompt tokens       tokens                    pure CPU; big prompts off the event loop
    choose a deployment       candidates in order       (routing issue: cheapest within SLO)
    call the upstream         providers.<kind>          streaming; failover to the next candidate
    relay the answer          bytes as they came        the stream is never buffered

The pipeline never imports the web framework: it returns a :class:`JsonResult` or a
:class:`StreamResult` and the API layer renders it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.resolver import Principal
from gateway.errors import (
    GatewayError,
    NotFound,
    PermissionDenied,
    UpstreamError,
    UpstreamProtocolError,
)
from gateway.policy.schema import Deployment, Policy, Route
from gateway.providers.base import Endpoint, Upstream, UpstreamReply, UpstreamRequest, Usage
from gateway.providers.sse import is_done
from gateway.record import RequestRecord
from gateway.tokens import TokenCounter

_USAGE_NULL = (b'"usage":null', b'"usage": null')


@dataclass(frozen=True, slots=True)
class JsonResult:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class StreamResult:
    events: AsyncIterator[bytes]
    headers: dict[str, str]


class Pipeline:
    """Serves one OpenAI request for an authenticated principal."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        upstreams: Callable[[], Mapping[str, Upstream]],
        tokens: TokenCounter,
    ) -> None:
        self._policy = policy
        self._upstreams = upstreams
        self._tokens = tokens

    async def handle(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        principal: Principal,
        record: RequestRecord,
    ) -> JsonResult | StreamResult:
        # One snapshot of each for the whole request: a reload mid-request changes nothing here.
        policy = self._policy()
        upstreams = self._upstreams()
        route_name: str = body["model"]
        record.requested_model = route_name
        route = policy.route(route_name)
        if route is None:
            raise NotFound(
                f"The model '{route_name}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if not policy.team_may_use(principal.team, route_name):
            raise PermissionDenied(
                f"Team '{principal.team}' may not use the model '{route_name}'.", param="model"
            )
        record.route = route_name
        stream = bool(body.get("stream"))
        record.stream = stream
        user = body.get("user")
        record.end_user = user if isinstance(user, str) else None

        client_wants_usage = _wants_usage(body)
        if stream and endpoint is not Endpoint.EMBEDDINGS and not client_wants_usage:
            # Completion tokens are billed from the upstream's usage, so ask for it on every
            # stream; the extra usage-only chunk is removed before the client sees it.
            options = body.get("stream_options")
            body["stream_options"] = {**(options or {}), "include_usage": True}

        last_error: GatewayError | None = None
        for deployment_name in _attempt_order(route):
            deployment = policy.document.models[deployment_name]
            upstream = upstreams[deployment.provider]
            record.attempts += 1
            record.deployment, record.provider = deployment_name, deployment.provider
            if record.attempts == 1:
                record.prompt_tokens = await self._count_prompt(endpoint, body, deployment)
            request = UpstreamRequest(
                endpoint=endpoint,
                body={**body, "model": deployment.model},
                stream=stream,
                timeout_s=route.timeout_s,
                request_id=record.request_id,
            )
            try:
                if stream:
                    opened = await upstream.open_stream(request)
                else:
                    opened = await upstream.send(request)
            except UpstreamError as exc:
                last_error = exc
                record.error_type = exc.code
                if not exc.retryable:
                    raise
                continue
            headers = {
                "x-tollgate-route": route_name,
                "x-tollgate-deployment": deployment_name,
                "x-tollgate-attempts": str(record.attempts),
            }
            if isinstance(opened, UpstreamReply):
                return self._reply(opened, record, headers)
            record.replica = opened.replica
            record.error_type = None
            return StreamResult(self._relay(opened, record, client_wants_usage), headers)
        assert last_error is not None
        raise last_error

    async def _count_prompt(
        self, endpoint: Endpoint, body: dict[str, Any], deployment: Deployment
    ) -> int:
        model = deployment.model
        if endpoint is Endpoint.CHAT:
            return await self._tokens.count_chat_async(
                body["messages"], model, tools=body.get("tools"), functions=body.get("functions")
            )
        if endpoint is Endpoint.COMPLETIONS:
            return await self._tokens.count_prompt_async(body["prompt"], model)
        return await self._tokens.count_prompt_async(body["input"], model)

    def _reply(
        self, reply: UpstreamReply, record: RequestRecord, headers: dict[str, str]
    ) -> JsonResult:
        record.replica = reply.replica
        record.ttft_ms = record.total_ms = (time.perf_counter() - record.started) * 1000
        if reply.status >= 400:
            record.status = "upstream_client_error"
            record.error_type = f"upstream_{reply.status}"
        else:
            record.error_type = None
        _apply_usage(record, reply.usage)
        return JsonResult(reply.status, reply.body, reply.content_type, headers)

    async def _relay(
        self, stream: Any, record: RequestRecord, client_wants_usage: bool
    ) -> AsyncIterator[bytes]:
        """Forward events as they arrive; a stream cut short ends with an error event."""
        finished = False
        try:
            async for event in stream:
                if record.ttft_ms is None:
                    record.ttft_ms = (time.perf_counter() - record.started) * 1000
                if is_done(event):
                    finished = True
                    yield event
                    break
                if b'"usage"' in event and not any(n in event for n in _USAGE_NULL):
                    usage_only = _read_usage(event, record)
                    if usage_only and not client_wants_usage:
                        continue
                yield event
            if not finished:
                raise UpstreamProtocolError(
                    f"upstream {record.provider} ({record.replica}) ended the stream early"
                )
        except UpstreamError as exc:
            record.status, record.error_type = "upstream_error", exc.code
            yield b"data: " + exc.body() + b"\n\n"
        except BaseException:
            # The client went away (the response task was cancelled): stop generation now.
            if not finished:
                record.status, record.error_type = "client_disconnect", "client_disconnect"
            raise
        finally:
            await stream.aclose()
            record.total_ms = (time.perf_counter() - record.started) * 1000


def _attempt_order(route: Route) -> list[str]:
    """Candidates in policy order, then around again if ``retries`` asks for more attempts."""
    candidates = route.candidates
    attempts = 1 + (route.retries if route.retries is not None else len(candidates) - 1)
    return [candidates[i % len(candidates)] for i in range(attempts)]


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _apply_usage(record: RequestRecord, usage: Usage | None) -> None:
    if usage is None:
        return
    record.prompt_tokens = usage.prompt_tokens or record.prompt_tokens
    record.completion_tokens = usage.completion_tokens
    record.cached_tokens = usage.cached_tokens


def _read_usage(event: bytes, record: RequestRecord) -> bool:
    """Take the usage from a chunk; True when the chunk carries nothing but usage."""
    try:
        chunk = orjson.loads(event[event.index(b"{") :])
    except (ValueError, orjson.JSONDecodeError):
        return False
    if not isinstance(chunk, dict):
        return False
    _apply_usage(record, Usage.from_openai(chunk.get("usage")))
    return not chunk.get("choices")
