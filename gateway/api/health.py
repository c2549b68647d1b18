"""Liveness and readiness."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from gateway.api.deps import services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready when the policy is loaded and every dependency this replica needs answers."""
    found = services(request)
    checks = await found.readiness()
    ready = all(check["ok"] for check in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )
