"""What every handler needs: the services, the request record, the body, the caller."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fastapi import Request
from starlette.requests import ClientDisconnect

from gateway.auth.resolver import Principal
from gateway.errors import AuthenticationFailed, ClientGone, NotFound, PayloadTooLarge
from gateway.record import RequestRecord

if TYPE_CHECKING:
    from gateway.app import Services


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def record(request: Request) -> RequestRecord:
    found: RequestRecord = request.scope["state"]["record"]
    return found


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit}.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone("The client disconnected while sending its request.") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def api_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer`` or, for Azure-style clients, ``api-key``."""
    header = headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <key>'.")
        return token.strip()
    return headers.get("api-key") or None


async def principal(request: Request) -> Principal:
    """Authenticate the caller against the key store (cached) and the policy's static keys."""
    found = services(request)
    caller = await found.keys.resolve(api_key(request.headers), found.policies.current)
    rec = record(request)
    rec.team, rec.key_id = caller.team, caller.key_id
    return caller


def admin(request: Request) -> None:
    """Admin endpoints exist only when an admin key is set, and take only that key."""
    expected = services(request).settings.admin_key
    if not expected:
        raise NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    given = api_key(request.headers) or ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise AuthenticationFailed("Incorrect admin key.")
