"""The OpenAI-compatible endpoints under /v1."""

from __future__ import annotations

from typing import Annotated

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
    result = await found.pipeline.handle(endpoint, body, caller, rec)
    return render(result)


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
