"""The OpenAI-compatible endpoints under /v1 other than the three POSTs that carry the traffic
(chat, completions, embeddings: raw ASGI in :mod:`gateway.api.completions`)."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request, Response

from gateway.api.deps import principal, services
from gateway.auth.resolver import Principal
from gateway.errors import NotFound

router = APIRouter(prefix="/v1")
Caller = Annotated[Principal, Depends(principal)]


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
