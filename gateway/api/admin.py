"""Operator endpoints under /admin, guarded by TOLLGATE_ADMIN_KEY (absent: they do not exist)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from gateway.api.deps import admin, services
from gateway.errors import InvalidRequest, NotFound, PolicyError

router = APIRouter(prefix="/admin", dependencies=[Depends(admin)])
log = logging.getLogger("tollgate.admin")


@router.post("/policy/reload")
async def reload_policy(request: Request) -> Response:
    """Load the policy directory again; an invalid policy is refused and the old one serves on."""
    found = services(request)
    try:
        policy = found.reload_policy()
    except PolicyError as exc:
        raise InvalidRequest(
            "The new policy is invalid; the previous one is still serving. "
            + " | ".join(exc.problems),
            code="invalid_policy",
        ) from None
    body = {
        "status": "reloaded",
        "sources": list(policy.sources),
        "routes": list(policy.document.routes),
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _route(request: Request, name: str) -> tuple[Any, Any]:
    found = services(request)
    policy = found.policies.current
    route = policy.route(name)
    if route is None:
        raise NotFound(f"Unknown route '{name}'.", code="unknown_route")
    return found, route


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise InvalidRequest(f"Invalid '{name}': expected a non-negative integer.", param=name)
    return int(text)


@router.get("/routes/{route}/explain")
async def explain_route(route: str, request: Request) -> Response:
    """Every candidate's price for such a request, predicted latency, health, and the winner."""
    found, spec = _route(request, route)
    prices = found.prices.get(found.policies.current)
    body = found.router.explain(
        route,
        spec,
        prices,
        _int_param(request, "prompt_tokens", 1000) or 0,
        expected_output_tokens=_int_param(request, "output_tokens", None),
    )
    return Response(orjson.dumps(body, default=str), media_type="application/json")


@router.get("/routes/{route}/stats")
async def route_stats(route: str, request: Request) -> Response:
    """Goodput and traffic per deployment over the recent window."""
    found, _ = _route(request, route)
    return Response(
        orjson.dumps(found.router.route_stats(route), default=str), media_type="application/json"
    )
