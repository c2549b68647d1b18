"""Operator endpoints under /admin, guarded by TOLLGATE_ADMIN_KEY (absent: they do not exist)."""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter, Depends, Request, Response

from gateway.api.deps import admin, services
from gateway.errors import InvalidRequest, PolicyError

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
