"""The OpenAI-compatible endpoints under /v1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from gateway import validate
from gateway.api.deps import principal, read_body, record, services
from gateway.auth.resolver import Principal
from gateway.errors import NotFound
from gateway.pipeline import JsonResult, StreamResult
from gateway.providers.base import Endpoint

router = APIRouter(prefix="/v1")
Caller = Annotated[Principal, Depends(principal)]

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def _serve(endpoint: Endpoint, request: Request, caller: Principal) -> Response:
    found = services(request)
    rec = record(request)
    body = validate.parse_body(await read_body(request, found.settings.max_body_bytes))
    validate.check(endpoint, body)
    handling = found.pipeline.handle(endpoint, body, caller, rec, request.headers)
    if body.get("stream"):
        # A stream notices a departed client on its own (the response task is cancelled).
        return render(await handling)
    result = await _unless_client_leaves(request, handling)
    if result is None:
        rec.status, rec.error_type = "client_disconnect", "client_disconnect"
        return Response(status_code=499)
    return render(result)


async def _unless_client_leaves(
    request: Request, work: Coroutine[Any, Any, JsonResult | StreamResult]
) -> JsonResult | StreamResult | None:
    """Run ``work``; if the client disconnects first, cancel it (closing the upstream request,
    so a generation nobody will read stops costing money) and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done() and not watcher.done():  # we were cancelled ourselves
            task.cancel()
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def render(result: JsonResult | StreamResult) -> Response:
    if isinstance(result, StreamResult):
        return StreamingResponse(
            result.events,
            media_type="text/event-stream",
            headers={**_SSE_HEADERS, **result.headers},
        )
    return Response(
        result.body,
        status_code=result.status,
        media_type=result.content_type,
        headers=result.headers,
    )


@router.post("/chat/completions")
async def chat_completions(request: Request, caller: Caller) -> Response:
    return await _serve(Endpoint.CHAT, request, caller)


@router.post("/completions")
async def completions(request: Request, caller: Caller) -> Response:
    return await _serve(Endpoint.COMPLETIONS, request, caller)


@router.post("/embeddings")
async def embeddings(request: Request, caller: Caller) -> Response:
    return await _serve(Endpoint.EMBEDDINGS, request, caller)


def _model(route: str) -> dict[str, object]:
    return {"id": route, "object": "model", "created": 0, "owned_by": "tollgate"}


@router.get("/models")
async def list_models(request: Request, caller: Caller) -> Response:
    policy = services(request).policies.current
    data = [_model(route) for route in policy.routes_for(caller.team)]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request, caller: Caller) -> Response:
    policy = services(request).policies.current
    if policy.route(model_id) is None or not policy.team_may_use(caller.team, model_id):
        raise NotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return Response(orjson.dumps(_model(model_id)), media_type="application/json")


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown(path: str, request: Request) -> Response:
    raise NotFound(f"Unknown request URL: {request.method} /v1/{path}.", code="unknown_url")
